"""The ``onnxruntime`` pass: run an encoder's forward in ONNX Runtime (fused attention, optional INT8).

Build: the FP32 torch model is exported with the TorchScript exporter (eager attention, dynamic batch and
sequence axes, as :mod:`autolite.export.onnx` does), optimized by ONNX Runtime's transformer optimizer
(``EmbedLayerNormalization``, fused ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``) and, for
``precision: int8``, quantized by ``quantize_dynamic`` (per-channel INT8 weights, uint8 activations
quantized per tensor at run time; MatMul -> ``DynamicQuantizeMatMul``, Attention -> ``QAttention``: MLAS
u8s8 kernels, VNNI/AMX where the CPU has them).

The returned model is the same HF model object with its ``forward`` routed to the session, so it takes
the HF inputs and returns the HF output type (``last_hidden_state`` / ``hidden_states`` / ``logits``).
Saving keeps the FP32 weights in safetensors; ``autolite.load`` rebuilds the session deterministically
from them (``after_load``). Built graphs are cached under the autolite cache dir, keyed by a hash of the
weights, config and options, so a reload (or a second candidate) skips export and quantization.
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
import types
from pathlib import Path
from typing import Any

import torch

from autolite.config import PassConfig
from autolite.errors import BackendUnavailableError, RecipeError
from autolite.passes import PassContext, register_pass

log = logging.getLogger(__name__)
_QUANT_OPS = ("MatMul", "Attention")


@dataclasses.dataclass
class OnnxRuntime(PassConfig):
    """Run the (encoder) model in ONNX Runtime.

    ``precision``: "fp32" or "int8" (dynamic quantization); ``optimize``: fuse attention/LayerNorm/GELU;
    ``per_channel``: per-output-channel INT8 weight scales; ``quantize_attention``: also quantize the
    fused attention's QKV projection (``QAttention``).
    """

    name = "onnxruntime"
    precision: str = "int8"
    optimize: bool = True
    per_channel: bool = True
    quantize_attention: bool = True

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "int8"):
            raise RecipeError(f"onnxruntime precision must be fp32 or int8, got '{self.precision}'")


def check_available(model: torch.nn.Module, family: Any) -> None:
    """Raise :class:`BackendUnavailableError` when this model cannot run in ONNX Runtime here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError("the onnxruntime pass needs the onnx and onnxruntime packages "
                                      "(pip install onnx onnxruntime)") from exc
    from autolite.export.common import custom_modules

    kind = getattr(family, "kind", None)
    if kind != "encoder":
        raise BackendUnavailableError(f"the onnxruntime pass runs encoders only (this is a {kind} model: "
                                      "generation needs a KV cache the exported graph lacks)")
    found = custom_modules(model)
    if found:
        raise BackendUnavailableError(f"the onnxruntime pass exports FP32 float models; this one holds {found[0]} "
                                      "(put onnxruntime first in the recipe, or drop the quantization pass)")
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        raise BackendUnavailableError("the onnxruntime pass exports FP32 models; drop the precision pass")
    if getattr(model, "_autolite_ort", None) is not None:
        raise BackendUnavailableError("this model already runs in ONNX Runtime")


GRAPH_BUILDER_VERSION = 2  # bump when export/optimize changes what a cached graph holds (2: pruned-head fusion)


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


def build_graph(model: torch.nn.Module, family: Any, config: OnnxRuntime) -> tuple[Path, str]:
    """The ONNX file for ``model`` under ``config`` (cached); returns (path, how it was obtained)."""
    from autolite.export.onnx import optimize_graph
    from autolite.loading import cache_root

    path = cache_root() / "onnxruntime" / f"{graph_key(model, config)}.onnx"
    if path.is_file():
        return path, f"cached graph {path.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        work = Path(tmp) / "model.onnx"
        names = _export(model, family, work)
        how = [f"exported outputs {names}"]
        if config.optimize:
            how.append(optimize_graph(work, model.config, family))
        if config.precision == "int8":
            how.append(_quantize(work, config))
        os.replace(work, path)
    return path, "; ".join(how)


def _sample(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = torch.arange(2 * 16).view(2, 16) % max(vocab - 1, 1) + 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _export(model: torch.nn.Module, family: Any, path: Path) -> list[str]:
    """TorchScript export with eager attention (ORT's fusion patterns match its MatMul-Softmax graph)."""
    from autolite.export.common import UnsupportedExportError
    from autolite.export.onnx import eager_attention, trace_graph

    model.eval()
    try:
        with eager_attention(model, enabled=True):
            return trace_graph(model, family, _sample(model), path)
    except UnsupportedExportError as exc:
        raise BackendUnavailableError(f"this {family.name} model could not be exported to ONNX: {exc}") from exc


def _quantize(path: Path, config: OnnxRuntime) -> str:
    from autolite.export.common import UnsupportedExportError
    from autolite.export.onnx import quantize_graph

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


class OrtRunner:
    """Holds the session; shared (not copied) by ``copy.deepcopy`` and dropped by pickling."""

    def __init__(self, session: Any, has_head: bool, how: str) -> None:
        self.session, self.has_head, self.how = session, has_head, how
        self.inputs = [i.name for i in session.get_inputs()]
        self.outputs = [o.name for o in session.get_outputs()]

    def __deepcopy__(self, memo: dict) -> "OrtRunner":
        return self

    def __getstate__(self) -> dict:
        raise BackendUnavailableError("an ONNX Runtime model cannot be pickled; save it with autolite (save_model)")

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        feeds = {k: feeds[k].detach().cpu().to(torch.int64).numpy() for k in self.inputs}
        values = self.session.run(self.outputs, feeds)
        return {name: torch.from_numpy(value) for name, value in zip(self.outputs, values)}


def _ort_forward(self: torch.nn.Module, input_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                 output_hidden_states: bool | None = None, return_dict: bool | None = None, **kwargs: Any):
    """HF-style forward served by the ONNX Runtime session (``self._autolite_ort``)."""
    from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

    if input_ids is None:
        raise BackendUnavailableError("the ONNX Runtime model takes input_ids (inputs_embeds is not exported)")
    if token_type_ids is not None and bool(token_type_ids.any()):
        raise BackendUnavailableError("the ONNX Runtime graph was exported without token_type_ids; "
                                      "pass all-zero segment ids or use the torch model")
    if kwargs.get("labels") is not None or kwargs.get("output_attentions"):
        raise BackendUnavailableError("the ONNX Runtime model returns hidden states and logits only "
                                      "(no loss from labels, no attentions)")
    runner: OrtRunner = self._autolite_ort
    out = runner.run(input_ids, attention_mask)
    hidden = out["last_hidden_state"]
    states = (hidden,) if output_hidden_states else None
    if runner.has_head:
        return SequenceClassifierOutput(logits=out["logits"], hidden_states=states)
    return BaseModelOutput(last_hidden_state=hidden, hidden_states=states)


def attach(model: torch.nn.Module, family: Any, config: OnnxRuntime) -> str:
    """Build (or reuse) the graph for ``model`` and route its forward to an ORT session; returns notes."""
    check_available(model, family)
    path, how = build_graph(model, family, config)
    session = make_session(path)
    has_head = "logits" in [o.name for o in session.get_outputs()]
    model._autolite_ort = OrtRunner(session, has_head, how)
    model.forward = types.MethodType(_ort_forward, model)
    model.eval()
    return how


def apply_onnxruntime(model: torch.nn.Module, config: OnnxRuntime, ctx: PassContext) -> torch.nn.Module:
    from autolite.arch import family_of

    family = ctx.family or family_of(model)
    how = attach(model, family, config)
    ctx.note(f"onnxruntime {config.precision}: forward runs in ONNX Runtime {_ort_version()} "
             f"({torch.get_num_threads()} threads; {how})")
    return model


def reload_onnxruntime(model: torch.nn.Module, config: OnnxRuntime, ctx: PassContext) -> torch.nn.Module:
    """``after_load``: rebuild the same graph from the stored FP32 weights (cached by weight hash)."""
    from autolite.arch import family_of

    attach(model, ctx.family or family_of(model), config)
    return model


def is_onnxruntime(model: torch.nn.Module) -> bool:
    """True when the model's forward runs in ONNX Runtime."""
    return getattr(model, "_autolite_ort", None) is not None


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


register_pass(OnnxRuntime, after_load=reload_onnxruntime)(apply_onnxruntime)
