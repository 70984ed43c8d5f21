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

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from autolite.arch import family_of
from autolite.eval.forward import model_inputs, tokenize
from autolite.export.common import ExportResult, UnsupportedExportError, dtype_name, float_dtype, require_plain
from autolite.export.validate import LOSSLESS, Tolerance, collect, corpus_texts, difference, torch_outputs, validate
from autolite.io import atomic_dir
from autolite.runtime.onnx_graph import OPSET, eager_attention, optimize_graph, quantize_graph, session, trace_graph

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "int8")
_INT8_COSINE_SLACK = 0.001  # issue 7: INT8 exports keep cosine >= the in-memory INT8 model's - 0.001


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
