"""The ``openvino`` pass: run an encoder's forward in OpenVINO (its CPU plugin's default precision, or INT8).

Build: the FP32 model is exported to plain ONNX (the ONNX Runtime backend's exporter, unfused), read by
OpenVINO and, for ``precision: int8``, quantized by NNCF post-training quantization (``nncf.quantize`` with
``ModelType.TRANSFORMER``: INT8 weights and activations with ranges from the calibration texts); the IR is
cached under the autolite cache dir, keyed by the weights, config and options. ``precision: auto`` compiles
with OpenVINO's default inference precision (BF16 where the CPU computes it natively: AMX or AVX512-BF16;
else FP32); ``fp32`` forces FP32.

As with ``onnxruntime``, the HF model object stays, its ``forward`` is served by the compiled model, the torch
weights are memory-mapped from a file in the cache (no second FP32 copy resident), saving keeps the FP32
weights and ``autolite.load`` rebuilds the same IR from them (the calibration token ids are recorded).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from autolite.arch import family_of
from autolite.cache import cache_root, mark_used, stored
from autolite.config import PassConfig
from autolite.errors import BackendUnavailableError, RecipeError
from autolite.passes import PassContext, register_pass
from autolite.runtime import ort
from autolite.runtime.external import HELD_ATTR, Runner, offload_weights, route_forward, rss_mb

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "int8")
IR_VERSION = 1  # bump when the build changes what a cached IR holds
STATIC_MIN_FILL = 0.75  # a static-shape model pads inputs filling at least this share of its shape


@dataclasses.dataclass
class OpenVino(PassConfig):
    """Run the (encoder) model in OpenVINO.

    ``precision``: "auto" (OpenVINO's default: BF16 where native, else FP32), "fp32", or "int8" (NNCF
    post-training quantization on the calibration texts, at most ``calib_samples``; their token ids are
    recorded in ``calib_ids`` so a reload rebuilds the same model). ``static``: compile for one input shape,
    ``shape`` = [batch, seq] (default: the shape the caller runs, recorded): inputs filling most of it are
    padded up to it, larger or much smaller ones run a dynamic-shape compile made when first needed.
    ``streams`` > 1: OpenVINO's throughput mode, the threads split into that many streams, each running its
    share of the batch rows at once.
    """

    name = "openvino"
    precision: str = "auto"
    calib_samples: int = 64
    calib_ids: list[list[int]] | None = None
    static: bool = False
    shape: list[int] | None = None
    streams: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise RecipeError(f"openvino precision must be one of {PRECISIONS}, got '{self.precision}'")
        if self.calib_samples < 1:
            raise RecipeError("openvino calib_samples must be >= 1")
        if self.shape is not None and (len(self.shape) != 2 or any(not isinstance(v, int) or v < 1
                                                                   for v in self.shape)):
            raise RecipeError(f"openvino shape must be [batch, seq] of positive integers, got {self.shape}")
        if self.streams < 1:
            raise RecipeError("openvino streams must be >= 1")


def check_available(model: torch.nn.Module, family: Any, int8: bool) -> None:
    """Raise :class:`BackendUnavailableError` when this model cannot run in OpenVINO here."""
    try:
        import openvino  # noqa: F401 - optional dependency (pip install 'autolite[peers]')
        if int8:
            import nncf  # noqa: F401 - optional dependency, only for INT8
    except ImportError as exc:
        raise BackendUnavailableError("the openvino pass needs the openvino package (and nncf for int8): "
                                      "pip install 'autolite[peers]'") from exc
    ort.check_available(model, family, what="the openvino pass")


def ir_key(model: torch.nn.Module, config: OpenVino) -> str:
    import openvino

    fp32 = ort.graph_key(model, ort.OnnxRuntime(precision="fp32", optimize=False))
    same_ir = dataclasses.replace(config, static=False, shape=None, streams=1)  # how it compiles: same IR
    blob = repr((fp32, dataclasses.astuple(same_ir), IR_VERSION, openvino.__version__))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def build_ir(model: torch.nn.Module, family: Any, config: OpenVino, key: str) -> tuple[Path, str]:
    """The OpenVINO IR (``.xml`` + ``.bin``) for ``model`` under ``config`` (cached); returns (xml, how)."""
    import openvino as ov

    xml = cache_root() / "openvino" / f"{key}.xml"
    if xml.is_file() and xml.with_suffix(".bin").is_file():
        mark_used(xml, xml.with_suffix(".bin"))
        return xml, f"cached IR {xml.name}"
    onnx_path, how = ort.build_graph(model, family, ort.OnnxRuntime(precision="fp32", optimize=False))
    ov_model = ov.Core().read_model(str(onnx_path))
    steps = [f"ONNX ({how})"]
    if config.precision == "int8":
        ov_model = _nncf_int8(ov_model, config)
        steps.append(f"NNCF INT8 post-training quantization on {len(config.calib_ids)} calibration texts")
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=xml.parent) as tmp:
        work = Path(tmp) / "model.xml"
        ov.save_model(ov_model, str(work), compress_to_fp16=False)
        os.replace(work.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(work, xml)  # the .xml last: it marks a complete entry
    stored(xml, xml.with_suffix(".bin"))
    return xml, "; ".join(steps)


def _nncf_int8(ov_model: Any, config: OpenVino) -> Any:
    import nncf  # optional dependency: only INT8 needs it (slow to import)

    feeds = ort.calibration_feeds(config.calib_ids)
    names = {port.get_any_name() for port in ov_model.inputs}
    dataset = nncf.Dataset([{k: v for k, v in feed.items() if k in names} for feed in feeds])
    try:
        return nncf.quantize(ov_model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds))
    except Exception as exc:  # noqa: BLE001 - any NNCF failure means this backend cannot run the model
        raise BackendUnavailableError(f"NNCF could not quantize this model: {str(exc).splitlines()[0]}") from exc


GRAPH_NAMES = ("input_ids", "attention_mask", "last_hidden_state", "logits")


def port_name(port: Any) -> str:
    """The exported graph's name of a port: OpenVINO merges tensor names (a T5 encoder's output also carries
    the name of the op that made it), and ``get_any_name`` may return any of them."""
    names = port.get_names()
    return next((name for name in GRAPH_NAMES if name in names), port.get_any_name())


class OpenVinoRunner(Runner):
    """Holds the compiled model and one infer request per stream (each runs its share of the batch rows, at
    once); a static-shape model (``shape``) pads inputs that nearly fill it (:func:`fits`) up to its shape and
    hands the others to a dynamic-shape compile (``dynamic()``, made on first need)."""

    kind = "OpenVINO"

    def __init__(self, compiled: Any, how: str, shape: list[int] | None = None, dynamic: Any = None,
                 streams: int = 1) -> None:
        super().__init__([port_name(p) for p in compiled.inputs], [port_name(p) for p in compiled.outputs], how)
        self.compiled = compiled
        self.requests = [compiled.create_infer_request() for _ in range(streams)]
        self.shape, self.make_dynamic, self.fallback = shape, dynamic, None

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch, seq = input_ids.shape  # (B, T)
        if self.shape is not None and not fits(batch, seq, self.shape):
            if self.fallback is None:
                self.fallback = OpenVinoRunner(self.make_dynamic(), self.how)
            return self.fallback.run(input_ids, attention_mask)
        parts = [(ids, mask) for ids, mask in zip(input_ids.tensor_split(len(self.requests)),
                                                   attention_mask.tensor_split(len(self.requests))) if len(ids)]
        for request, (ids, mask) in zip(self.requests, parts):
            request.start_async(self.feeds(*self._padded(ids, mask)))
        outs = []
        for request, (ids, _) in zip(self.requests, parts):
            request.wait()
            rows, tokens = ids.shape
            # the request reuses its output buffers on the next call: copy out, drop the padding
            got = {name: torch.tensor(request.get_output_tensor(i).data) for i, name in enumerate(self.outputs)}
            outs.append({name: value[:rows, :tokens] if name == "last_hidden_state" else value[:rows]
                         for name, value in got.items()})
        return outs[0] if len(outs) == 1 else {name: torch.cat([o[name] for o in outs]) for name in self.outputs}

    def _padded(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A stream's rows padded to its static shape (padded tokens are masked out); as given when dynamic."""
        if self.shape is None:
            return ids, mask
        pad = (0, self.shape[1] - ids.shape[1], 0, stream_rows(self.shape[0], len(self.requests)) - ids.shape[0])
        return torch.nn.functional.pad(ids, pad), torch.nn.functional.pad(mask, pad)


def fits(batch: int, seq: int, shape: list[int]) -> bool:
    """Whether a ``batch x seq`` input runs on the static ``shape``: not larger, and filling at least
    ``STATIC_MIN_FILL`` of it (padding a short request up to a large shape would cost the whole shape)."""
    return batch <= shape[0] and seq <= shape[1] and batch * seq >= STATIC_MIN_FILL * shape[0] * shape[1]


def stream_rows(batch: int, streams: int) -> int:
    """The batch rows one stream runs (the most ``tensor_split`` gives it)."""
    return -(-batch // streams)


def compile_ir(xml: Path, config: OpenVino, static: bool = False, threads: int | None = None) -> Any:
    """Compile for CPU with ``threads`` (default: torch's thread count), latency mode and one stream (throughput
    mode for ``config.streams`` > 1); ``static``: for ``config.shape`` (a stream's share of its rows)."""
    import openvino as ov

    properties = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                  "PERFORMANCE_HINT": "LATENCY" if config.streams == 1 else "THROUGHPUT",
                  "NUM_STREAMS": config.streams}
    if config.precision == "fp32":
        properties["INFERENCE_PRECISION_HINT"] = "f32"
    core = ov.Core()
    model = core.read_model(str(xml))
    if static:
        shape = [stream_rows(config.shape[0], config.streams), config.shape[1]]
        model.reshape({port: ov.PartialShape(shape) for port in model.inputs})
    return core.compile_model(model, "CPU", properties)


@functools.cache
def load_cpu_plugin() -> None:
    """Compile a one-op model once per process: OpenVINO loads its CPU plugin and thread pools on the first
    compile, which would otherwise count as memory held by the first model built."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], np.float32)
    ov.Core().compile_model(ov.Model([ops.add(x, x)], [x]), "CPU").create_infer_request().infer(
        {0: np.ones((1, 4), np.float32)})


def attach(model: torch.nn.Module, family: Any, config: OpenVino) -> str:
    """Build (or reuse) the IR, route ``model.forward`` to the compiled model, map the torch weights from disk."""
    check_available(model, family, config.precision == "int8")
    key = ir_key(model, config)
    xml, how = build_ir(model, family, config, key)
    load_cpu_plugin()
    before = rss_mb()
    threads = torch.get_num_threads()  # now: a server later runs its own torch ops on one thread
    compiled = compile_ir(xml, config, static=config.static, threads=threads)
    held = max(rss_mb() - before, xml.with_suffix(".bin").stat().st_size / 2**20 * 0.5)  # RSS noise floor
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    shape = list(config.shape) if config.static else None
    latency = dataclasses.replace(config, streams=1)  # the dynamic compile: latency mode, all threads, any shape
    route_forward(model, OpenVinoRunner(compiled, how, shape, lambda: compile_ir(xml, latency, threads=threads),
                                        config.streams))
    if shape:
        how += (f"; compiled for the static shape {shape[0]} x {shape[1]} (inputs filling >= "
                f"{STATIC_MIN_FILL:.0%} of it padded up to it, others run a dynamic compile)")
    if config.streams > 1:
        how += f"; {config.streams} streams, each running its share of the batch rows"
    setattr(model, HELD_ATTR, held)
    mapped = offload_weights(model, ort.graph_key(model, ort.OnnxRuntime(precision="fp32", optimize=False)))
    return (f"{how}; compiled for CPU, inference precision {precision}; holds ~{held:.0f} MiB, {mapped} torch "
            "weight tensors memory-mapped from disk")


def apply_openvino(model: torch.nn.Module, config: OpenVino, ctx: PassContext) -> tuple[torch.nn.Module, OpenVino]:
    family = ctx.family or family_of(model)
    check_available(model, family, config.precision == "int8")
    if config.precision == "int8":
        config = ort.with_calibration(config, ctx)
    if config.static and config.shape is None:
        shape = getattr(ctx, "shape", None)
        if not shape:
            raise RecipeError("openvino static: give shape: [batch, seq] (or run it where the shape is known)")
        config = dataclasses.replace(config, shape=[int(shape[0]), int(shape[1])])
    how = attach(model, family, config)
    ctx.note(f"openvino {config.precision}: forward runs in OpenVINO {_version()} "
             f"({torch.get_num_threads()} threads; {how})")
    return model, config


def reload_openvino(model: torch.nn.Module, config: OpenVino, ctx: PassContext) -> torch.nn.Module:
    """``after_load``: rebuild the same IR from the stored FP32 weights (cached by weight hash)."""
    attach(model, ctx.family or family_of(model), config)
    return model


def is_openvino(model: torch.nn.Module) -> bool:
    """True when the model's forward runs in OpenVINO."""
    return isinstance(getattr(model, "_autolite_backend", None), OpenVinoRunner)


def _version() -> str:
    import openvino

    return openvino.__version__.split("-")[0]


register_pass(OpenVino, after_load=reload_openvino)(apply_openvino)
