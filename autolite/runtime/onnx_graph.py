"""Torch -> ONNX graphs and ONNX Runtime sessions: the tracing, fusion and INT8 quantization shared by the
``onnxruntime`` backend pass (:mod:`autolite.runtime.ort`) and the ``onnx`` export (:mod:`autolite.export.onnx`).

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), whose graphs ONNX
Runtime's transformer optimizer matches its attention-fusion patterns against.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from autolite.errors import UnsupportedExportError
from autolite.eval.forward import torch_outputs
from autolite.prune.surgery import LAYOUT_KEY

OPSET = 17


class _Wrapper(torch.nn.Module):
    """Positional inputs -> a tuple of the outputs :func:`torch_outputs` compares."""

    def __init__(self, model: torch.nn.Module, family: Any, names: list[str]) -> None:
        super().__init__()
        self.model, self.family, self.names = model, family, names

    def forward(self, input_ids, attention_mask, decoder_input_ids=None):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if decoder_input_ids is not None:
            batch["decoder_input_ids"] = decoder_input_ids
        kwargs = {"use_cache": False} if self.family.kind != "encoder" else {"output_hidden_states": True}
        out = self.model(**batch, **kwargs, return_dict=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None and self.family.kind == "encoder":
            hidden = out.hidden_states[-1]
        values = {"last_hidden_state": hidden, "logits": getattr(out, "logits", None),
                  "encoder_last_hidden_state": getattr(out, "encoder_last_hidden_state", None)}
        return tuple(values[name] for name in self.names)


def trace_graph(model: torch.nn.Module, family: Any, sample: dict[str, torch.Tensor], path: Path,
                opset: int = OPSET) -> list[str]:
    """TorchScript-export ``model`` on ``sample`` (dynamic batch/sequence axes); returns the output names.

    Raises :class:`UnsupportedExportError` with the exporter's first line when tracing fails."""
    names = list(torch_outputs(model, family, sample))
    inputs = list(sample)
    axes = {name: {0: "batch", 1: "sequence"} for name in inputs + names}
    was_training = model.training
    wrapper = _Wrapper(model, family, names).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(sample[k] for k in inputs), str(path), input_names=inputs,
                              output_names=names, dynamic_axes=axes, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
    except Exception as exc:
        raise UnsupportedExportError(f"torch.onnx.export failed for this {family.name} model: "
                                     f"{str(exc).splitlines()[0]}") from exc
    finally:
        model.train(was_training)
    return names


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Trace with eager attention: ORT's fusion patterns match its MatMul-Softmax graph, not SDPA's."""
    before = getattr(model.config, "_attn_implementation", None)
    if not enabled or before in (None, "eager") or not hasattr(model, "set_attn_implementation"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def optimize_graph(path: Path, config: Any, family: Any) -> str:
    """ONNX Runtime's transformer optimizer in place; returns which fused operators it produced."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model_type = family.onnx_optimizer
    if model_type is None:
        return f"optimize: ONNX Runtime has no transformer optimizer for {family.name}; graph left as exported"
    heads, hidden = attention_size(config)
    options = FusionOptions(model_type)
    options.enable_attention = heads >= 0  # pruned layers with different head counts: no one Attention shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(str(path), model_type=model_type, num_heads=max(heads, 0),
                                   hidden_size=max(hidden, 0), optimization_options=options)
    fused = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(path))
    skipped = "" if heads >= 0 else "; attention not fused (layers keep different head counts)"
    return f"optimize ({model_type}): fused {fused or 'nothing'}{skipped}"


def attention_size(config: Any) -> tuple[int, int]:
    """(heads, attention width) for ORT's attention fusion (0 = let ORT detect it); (-1, -1) when pruned
    layers differ in head count, so no one Attention shape fits.

    A head-pruned BERT keeps its config's head count (its head size derives from it), so the pruned layout
    autolite records in the config says how many heads the graph really has."""
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "dim", 0) or 0)
    kept = {entry["heads"] for entry in (getattr(config, LAYOUT_KEY, None) or {}).values() if "heads" in entry}
    if not kept or not heads:
        return heads, hidden
    if len(kept) > 1:
        return -1, -1
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kept_heads = kept.pop()
    return kept_heads, kept_heads * head_dim


def quantize_graph(path: Path, per_channel: bool = False, ops: tuple[str, ...] = ("MatMul",)) -> str:
    """ONNX Runtime ``quantize_dynamic`` of ``ops`` in place (INT8 weights, uint8 activations at run time)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = path.with_name("model.fp32.onnx")
    os.replace(path, source)
    logging.disable(logging.WARNING)  # the quantizer logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         op_types_to_quantize=list(ops),
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops lack types
    except Exception as exc:
        raise UnsupportedExportError(f"ONNX Runtime could not quantize this graph to int8: "
                                     f"{str(exc).splitlines()[0]}") from exc
    finally:
        logging.disable(logging.NOTSET)
        source.unlink(missing_ok=True)
    return f"quantize_dynamic int8 ({'per-channel' if per_channel else 'per-tensor'}) of {list(ops)}"


def session(path: str | Path):
    """An ONNX Runtime CPU session for an exported model."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
