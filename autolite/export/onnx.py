"""ONNX export, validated in ONNX Runtime against the torch model.

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). In torch 2.13 it
exports every family here (BERT, RoBERTa, DistilBERT, T5, GPT-2, Llama, Qwen2, Mistral) in about a second
with dynamic batch and sequence axes and needs nothing beyond ``onnx``; the dynamo exporter needs
``onnxscript`` and takes several times longer, and ONNX Runtime's transformer optimizer matches its
attention-fusion patterns against graphs of the TorchScript exporter.

Precisions: ``fp32`` (lossless, rel L2 < 1e-4 required) and ``int8`` (ONNX Runtime ``quantize_dynamic``
of every MatMul: int8 weights, per-batch uint8 activations, ``MatMulInteger`` kernels), validated by
cosine against the FP32 torch model and compared with torch's own dynamic INT8 of the same model.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from autolite.arch import family_of
from autolite.eval.forward import model_inputs, tokenize
from autolite.export.common import ExportResult, UnsupportedExportError, dtype_name, float_dtype, require_plain
from autolite.export.validate import LOSSLESS, Tolerance, collect, corpus_texts, difference, torch_outputs, validate
from autolite.io import atomic_dir
from autolite.prune.surgery import LAYOUT_KEY

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "int8")
OPSET = 17
_INT8_COSINE_SLACK = 0.001  # issue 7: INT8 exports keep cosine >= the in-memory INT8 model's - 0.001


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


def export_onnx(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, precision: str = "fp32",
                optimize: bool = False, validate: bool = True, family: Any = None, opset: int = OPSET,
                overwrite: bool = False, max_texts: int | None = None) -> ExportResult:
    """Export to ``out_dir/model.onnx`` (+ config, tokenizer, ``onnx_export.json``) and validate it in ORT.

    ``optimize``: run ONNX Runtime's transformer optimizer (fuses attention/LayerNorm/GELU where its
    patterns match; the fused operators are listed in the result's notes).
    """
    family = family or family_of(model)
    _check(model, precision)
    out_dir = Path(out_dir)
    result = ExportResult(path=out_dir, format="onnx", precision=precision)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        path = tmp / "model.onnx"
        with eager_attention(model, enabled=optimize and family.kind == "encoder"):
            names = _export_graph(model, tokenizer, family, path, opset)
        if optimize:
            result.notes.append(optimize_graph(path, model.config, family))
        if precision == "int8":
            result.notes.append(quantize_graph(path) + " (MatMul -> MatMulInteger, int8 weights)")
        model.config.to_json_file(str(tmp / "config.json"))
        tokenizer.save_pretrained(str(tmp))
        if validate:
            result.validation = _validate(model, tokenizer, family, path, precision, max_texts, result.notes)
        _write_meta(tmp, names, precision, opset, result)
    return result


def _check(model: torch.nn.Module, precision: str) -> None:
    if precision not in PRECISIONS:
        raise UnsupportedExportError(f"ONNX export supports precision {' or '.join(PRECISIONS)} "
                                     f"(int8 = ONNX Runtime dynamic quantization); got '{precision}'")
    require_plain(model, "onnx", "float32 models (precision fp32, or int8 quantized by ONNX Runtime)")
    dtype = float_dtype(model)
    if dtype != torch.float32:
        raise UnsupportedExportError(f"ONNX export takes an FP32 model (this one is {dtype_name(dtype)}); export "
                                     "the float model with precision fp32 or int8")


def _sample(tokenizer: Any, family: Any) -> dict[str, torch.Tensor]:
    batch = tokenize(tokenizer, ["An example sentence to trace the graph.", "Short one."])
    return model_inputs(family, batch, torch.device("cpu"))


def _export_graph(model: torch.nn.Module, tokenizer: Any, family: Any, path: Path, opset: int) -> list[str]:
    """Trace the model to ``path`` with dynamic batch/sequence axes; returns the output names."""
    return trace_graph(model, family, _sample(tokenizer, family), path, opset)


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


def _validate(model, tokenizer, family, path: Path, precision: str, max_texts, notes: list[str]):
    sess = session(path)
    names = [o.name for o in sess.get_outputs()]
    feeds_wanted = {i.name for i in sess.get_inputs()}

    def run(batch):
        feeds = {k: v.numpy() for k, v in model_inputs(family, batch, torch.device("cpu")).items()
                 if k in feeds_wanted}
        return dict(zip(names, (torch.from_numpy(v) for v in sess.run(names, feeds))))

    reference = lambda b: torch_outputs(model, family, b)  # noqa: E731
    if precision == "fp32":
        return validate(run, reference, tokenizer, LOSSLESS, what="onnx fp32", max_texts=max_texts)
    in_memory = _torch_int8_cosine(model, tokenizer, family, max_texts)
    notes.append(f"torch dynamic INT8 of the same model (in memory): cosine {in_memory:.6f}")
    tolerance = Tolerance(min_cosine=in_memory - _INT8_COSINE_SLACK)
    return validate(run, reference, tokenizer, tolerance, what="onnx int8", max_texts=max_texts,
                    against="the FP32 torch model")


def _torch_int8_cosine(model, tokenizer, family, max_texts) -> float:
    """Cosine of torch's ``quantize_dynamic`` INT8 model vs FP32: the bar the ONNX INT8 export must meet."""
    import copy


    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates its quantized tensors; still the reference one-liner
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear},
                                                           dtype=torch.qint8)
    texts = corpus_texts(max_texts)
    got = collect(lambda b: torch_outputs(quantized, family, b), tokenizer, texts)
    ref = collect(lambda b: torch_outputs(model, family, b), tokenizer, texts)
    return difference(got, ref)[2]


def _write_meta(directory: Path, outputs: list[str], precision: str, opset: int, result: ExportResult) -> None:
    meta = {"format": "onnx", "file": "model.onnx", "precision": precision, "opset": opset,
            "outputs": outputs, "dynamic_axes": ["batch", "sequence"], "exporter": "torch.onnx (TorchScript)",
            "validation": result.validation.to_dict() if result.validation else None, "notes": result.notes}
    (directory / "onnx_export.json").write_text(json.dumps(meta, indent=2))
