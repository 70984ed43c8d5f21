"""Quantization passes: INT8 dynamic/static, weight-only INT8/INT4 (packed), QAT and mixed precision.

``from autolite.quant import Int8Dynamic, Int8Static, WeightOnly`` (imported lazily).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Int8Dynamic": "autolite.quant.int8", "DynamicInt8Linear": "autolite.quant.int8",
            "Int8Static": "autolite.quant.int8_static", "StaticInt8Linear": "autolite.quant.int8_static",
            "WeightOnly": "autolite.quant.weight_only", "WeightOnlyInt8Linear": "autolite.quant.weight_only",
            "WeightOnlyInt4Linear": "autolite.quant.weight_only"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autolite.quant' has no attribute '{name}'")
