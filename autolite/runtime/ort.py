"""The ``onnxruntime`` pass: run an encoder's forward in ONNX Runtime (fused attention, optional INT8).

Build: the FP32 torch model is exported with the TorchScript exporter (eager attention, dynamic batch and
sequence axes, as :mod:`autolite.export.onnx` does), optimized by ONNX Runtime's transformer optimizer
(``EmbedLayerNormalization``, fused ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``) and, for
``precision: int8``, quantized by ``quantize_dynamic`` (per-channel INT8 weights, uint8 activations
quantized per tensor at run time; MatMul -> ``DynamicQuantizeMatMul``, Attention -> ``QAttention``: MLAS
u8s8 kernels, VNNI/AMX where the CPU has them). ``precision: int8-static`` is calibrated static INT8:
``quantize_static`` (QDQ, per-channel INT8 weights, uint8 activations with MinMax ranges collected on the
calibration texts) of the unfused graph's MatMuls; the session fuses each QDQ pair into an INT8 MatMul.

The returned model is the same HF model object with its ``forward`` routed to the session, so it takes
the HF inputs and returns the HF output type (``last_hidden_state`` / ``hidden_states`` / ``logits``).
Its torch weights are then memory-mapped from a file in the cache (:func:`autolite.runtime.external.offload_weights`),
so no second FP32 copy stays resident. Saving keeps the FP32 weights in safetensors; ``autolite.load`` rebuilds
the session deterministically from them (``after_load``; the calibration texts are recorded in the config).
Built graphs are cached under the autolite cache dir, keyed by a hash of the weights, config and options,
so a reload (or a second candidate) skips export and quantization.
The session uses ``torch.get_num_threads()`` intra-op threads, without spinning (fair when timed
interleaved with torch).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from autolite.arch import family_of
from autolite.cache import cache_root, mark_used, stored
from autolite.config import PassConfig
from autolite.data import load_texts
from autolite.errors import BackendUnavailableError, RecipeError, UnsupportedExportError
from autolite.passes import PassContext, register_pass
from autolite.runtime.external import HELD_ATTR, Runner, offload_weights, route_forward, rss_mb, runner_of
from autolite.runtime.onnx_graph import eager_attention, optimize_graph, quantize_graph, trace_graph
from autolite.weights import custom_modules

log = logging.getLogger(__name__)
_QUANT_OPS = ("MatMul", "Attention")
PRECISIONS = ("fp32", "int8", "int8-static")


@dataclasses.dataclass
class OnnxRuntime(PassConfig):
    """Run the (encoder) model in ONNX Runtime.

    ``precision``: "fp32", "int8" (dynamic quantization) or "int8-static" (calibrated QDQ);
    ``optimize``: fuse attention/LayerNorm/GELU (dynamic INT8 and FP32); ``per_channel``: per-output-channel
    INT8 weight scales; ``quantize_attention``: also quantize the fused attention's QKV projection
    (``QAttention``); ``calib_ids``: the static ranges' calibration token ids (filled in from the calibration
    texts, at most ``calib_samples``, and recorded so a reload rebuilds the same graph without a tokenizer).
    """

    name = "onnxruntime"
    precision: str = "int8"
    optimize: bool = True
    per_channel: bool = True
    quantize_attention: bool = True
    calib_samples: int = 64
    calib_ids: list[list[int]] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise RecipeError(f"onnxruntime precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.calib_samples < 1:
            raise RecipeError("onnxruntime calib_samples must be >= 1")


def check_available(model: torch.nn.Module, family: Any, what: str = "the onnxruntime pass") -> None:
    """Raise :class:`BackendUnavailableError` when this model cannot run in ONNX Runtime (or, through its
    exported graph, in another engine: ``what`` names the pass) here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"{what} needs the onnx and onnxruntime packages "
                                      "(pip install onnx onnxruntime)") from exc

    kind = getattr(family, "kind", None)
    if kind != "encoder":
        raise BackendUnavailableError(f"{what} runs encoders only (this is a {kind} model: "
                                      "generation needs a KV cache the exported graph lacks)")
    found = custom_modules(model)
    if found:
        raise BackendUnavailableError(f"{what} exports FP32 float models; this one holds {found[0]} "
                                      "(put it first in the recipe, or drop the quantization pass)")
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        raise BackendUnavailableError(f"{what} exports FP32 models; drop the precision pass")
    if runner_of(model) is not None:
        raise BackendUnavailableError(f"this model already runs in {runner_of(model).kind}")


GRAPH_BUILDER_VERSION = 3  # bump when export/optimize changes what a cached graph holds (3: static INT8)


def graph_key(model: torch.nn.Module, config: OnnxRuntime) -> str:
    """Hash of the weights, the model config and the build options (names the cached graph)."""
    import onnxruntime

    digest = hashlib.blake2b(digest_size=16)
    settings = {k: v for k, v in model.config.to_dict().items() if k != "autolite"}  # not the recorded recipe
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    versions = (GRAPH_BUILDER_VERSION, torch.__version__, onnxruntime.__version__)
    digest.update(repr((dataclasses.astuple(config), versions)).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_graph(model: torch.nn.Module, family: Any, config: OnnxRuntime,
                key: str | None = None) -> tuple[Path, str]:
    """The ONNX file for ``model`` under ``config`` (cached); returns (path, how it was obtained)."""
    path = cache_root() / "onnxruntime" / f"{key or graph_key(model, config)}.onnx"
    if path.is_file():
        mark_used(path)
        return path, f"cached graph {path.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        work = Path(tmp) / "model.onnx"
        names = _export(model, family, work)
        how = [f"exported outputs {names}"]
        if config.optimize and config.precision != "int8-static":
            how.append(optimize_graph(work, model.config, family))
        if config.precision == "int8":
            how.append(_quantize(work, config))
        if config.precision == "int8-static":
            how.append(quantize_static_graph(work, config, calibration_feeds(config.calib_ids)))
        os.replace(work, path)
    stored(path)
    return path, "; ".join(how)


def calibration_feeds(calib_ids: list[list[int]] | None) -> list[dict[str, Any]]:
    """One ``{input_ids, attention_mask}`` numpy feed per calibration text (batch 1, its own length)."""
    import numpy as np

    if not calib_ids:
        raise BackendUnavailableError("static INT8 needs calibration texts")
    return [{"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), np.int64)}
            for ids in calib_ids]


def quantize_static_graph(path: Path, config: OnnxRuntime, feeds: list[dict[str, Any]]) -> str:
    """ONNX Runtime ``quantize_static`` in place: QDQ MatMuls, per-channel INT8 weights, uint8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, items: list[dict[str, Any]], names: list[str]) -> None:
            self.items = iter([{k: v for k, v in item.items() if k in names} for item in items])

        def get_next(self) -> dict[str, Any] | None:
            return next(self.items, None)

    import onnx

    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    source = path.with_name("model.fp32.onnx")
    os.replace(path, source)
    logging.disable(logging.WARNING)  # the quantizer logs a pre-processing hint on the root logger
    try:
        quantize_static(str(source), str(path), Reader(feeds, names), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul"], per_channel=config.per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    except Exception as exc:  # noqa: BLE001 - any quantizer failure means this backend cannot run the model
        raise BackendUnavailableError(f"ONNX Runtime could not quantize this graph statically: "
                                      f"{str(exc).splitlines()[0]}") from exc
    finally:
        logging.disable(logging.NOTSET)
        source.unlink(missing_ok=True)
    return f"quantize_static int8 QDQ ({'per-channel' if config.per_channel else 'per-tensor'}) of MatMul, " \
           f"ranges from {len(feeds)} calibration texts"


def _sample(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.arange(2 * 16).view(2, 16) % max(vocab - 1, 1) + 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _export(model: torch.nn.Module, family: Any, path: Path) -> list[str]:
    """TorchScript export with eager attention (ORT's fusion patterns match its MatMul-Softmax graph)."""
    model.eval()
    try:
        with eager_attention(model, enabled=True):
            return trace_graph(model, family, _sample(model), path)
    except UnsupportedExportError as exc:
        raise BackendUnavailableError(f"this {family.name} model could not be exported to ONNX: {exc}") from exc


def _quantize(path: Path, config: OnnxRuntime) -> str:
    try:
        return quantize_graph(path, config.per_channel, _QUANT_OPS if config.quantize_attention else _QUANT_OPS[:1])
    except UnsupportedExportError as exc:
        raise BackendUnavailableError(str(exc)) from exc


def make_session(path: Path, threads: int | None = None):
    """A CPU session with ``threads`` intra-op threads (default: torch's), no spinning, all graph fusions."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtRunner(Runner):
    """Holds the ONNX Runtime session."""

    kind = "ONNX Runtime"

    def __init__(self, session: Any, how: str) -> None:
        super().__init__([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()], how)
        self.session = session

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        values = self.session.run(self.outputs, self.feeds(input_ids, attention_mask))
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, values)}


def attach(model: torch.nn.Module, family: Any, config: OnnxRuntime) -> str:
    """Build (or reuse) the graph for ``model``, route its forward to an ORT session and map the torch
    weights from disk (no second resident copy); returns notes."""
    check_available(model, family)
    key = graph_key(model, config)
    path, how = build_graph(model, family, config, key)
    before = rss_mb()
    session = make_session(path)
    held = max(rss_mb() - before, path.stat().st_size / 2**20 * 0.5)  # RSS noise floor: half the graph file
    route_forward(model, OrtRunner(session, how))
    setattr(model, HELD_ATTR, held)
    mapped = offload_weights(model, key)
    return f"{how}; session holds ~{held:.0f} MiB, {mapped} torch weight tensors memory-mapped from disk"


def with_calibration(config: Any, ctx: PassContext) -> Any:
    """``config`` with ``calib_ids``: the token ids a static-INT8 build calibrates on (``ctx.calib``, else the
    bundled corpus's calibration split), recorded so a reload rebuilds the same graph."""
    if config.calib_ids is not None:
        return config
    if ctx.tokenizer is None:
        raise BackendUnavailableError(f"{config.name} {config.precision} needs the tokenizer for its calibration")
    texts = (list(ctx.calib or []) or load_texts(None, split="calib").texts)[: config.calib_samples]
    ids = [ctx.tokenizer(t, truncation=True, max_length=128)["input_ids"] for t in texts]
    return dataclasses.replace(config, calib_ids=ids)


def apply_onnxruntime(model: torch.nn.Module, config: OnnxRuntime,
                      ctx: PassContext) -> tuple[torch.nn.Module, OnnxRuntime]:
    family = ctx.family or family_of(model)
    if config.precision == "int8-static":
        config = with_calibration(config, ctx)
    how = attach(model, family, config)
    ctx.note(f"onnxruntime {config.precision}: forward runs in ONNX Runtime {_ort_version()} "
             f"({torch.get_num_threads()} threads; {how})")
    return model, config


def reload_onnxruntime(model: torch.nn.Module, config: OnnxRuntime, ctx: PassContext) -> torch.nn.Module:
    """``after_load``: rebuild the same graph from the stored FP32 weights (cached by weight hash)."""
    attach(model, ctx.family or family_of(model), config)
    return model


def is_onnxruntime(model: torch.nn.Module) -> bool:
    """True when the model's forward runs in ONNX Runtime."""
    runner = runner_of(model)
    return runner is not None and isinstance(runner, OrtRunner)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


register_pass(OnnxRuntime, after_load=reload_onnxruntime)(apply_onnxruntime)
