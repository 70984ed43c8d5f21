"""Exports, each validated against its source model on the embedded corpus.

    autolite.export(model, tok, "out/", format="hf")                  # transformers directory
    autolite.export(model, tok, "out/", format="st")                  # sentence-transformers (encoders)
    autolite.export(model, tok, "out/", format="onnx", precision="int8", optimize=True)
    autolite.export(model, tok, "out/", format="mlx", bits=4, group_size=64)
    autolite.export(model, tok, "out/", format="gguf")                # llama.cpp; INT4/INT8 kept exactly

Modules: ``hf.py`` (also ``save_model``), ``st.py``, ``onnx.py``, ``mlx.py`` + ``mlx_bert.py``, ``gguf.py``;
``validate.py`` measures the differences; ``common.py`` holds the result and error types.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import torch

from autolite.export.common import ExportResult, FORMATS, UnsupportedExportError
from autolite.export.hf import export_hf
from autolite.export.onnx import export_onnx
from autolite.export.st import export_st

__all__ = ["FORMATS", "ExportResult", "UnsupportedExportError", "export"]

_OPTIONS = {
    "hf": {"family", "overwrite", "max_texts"},
    "st": {"family", "overwrite", "max_texts", "source_dir", "normalize", "min_cosine"},
    "onnx": {"family", "overwrite", "max_texts", "precision", "optimize", "opset"},
    "mlx": {"family", "overwrite", "max_texts", "bits", "group_size"},
    "gguf": {"family", "overwrite", "max_texts", "float_type"},
}


def export(model: torch.nn.Module, tokenizer: Any, out: str | Path, format: str = "hf", validate: bool = True,
           **opts: Any) -> ExportResult:
    """Export ``model`` (+ tokenizer) to ``out`` in ``format`` and, unless ``validate=False``, prove it:
    the export is run and compared with the in-memory model; a failure raises ``NumericsError`` with
    the measured difference and leaves nothing at ``out``.

    Options: hf: ``overwrite``, ``max_texts``; st: + ``source_dir``, ``normalize``; onnx: ``precision``
    (fp32|int8), ``optimize``, ``opset``; mlx: ``bits`` (4|8), ``group_size`` (32|64); gguf: ``float_type``
    (f16|bf16|f32).
    """
    if format not in FORMATS:
        raise UnsupportedExportError(f"unknown export format '{format}'; supported: {', '.join(FORMATS)}")
    unknown = sorted(set(opts) - _OPTIONS[format])
    if unknown:
        raise UnsupportedExportError(f"format '{format}' has no option(s) {unknown}; allowed: "
                                     f"{sorted(_OPTIONS[format])}")
    if format == "gguf":
        from autolite.export.gguf import export_gguf as writer  # lazy: pulls the gguf library, only for this format
    elif format == "mlx":
        from autolite.export.mlx import export_mlx as writer  # lazy: the mlx writer, only for this format
    else:
        writer = {"hf": export_hf, "st": export_st, "onnx": export_onnx}[format]
    return writer(model, tokenizer, out, validate=validate, **opts)


class _CallablePackage(types.ModuleType):
    """``autolite.export(...)`` calls :func:`export` while ``autolite.export.onnx`` stays importable."""

    def __call__(self, *args: Any, **kwargs: Any) -> ExportResult:
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
