"""Quantization passes: INT8 dynamic/static, weight-only INT8/INT4 (packed), QAT and mixed precision.

Layers (import downward only): ``formats`` (tensor primitives) -> ``common`` (module helpers) -> ``layers``,
``embedding`` (packed modules) -> ``fakequant`` -> ``calibrate``, ``gptq`` -> ``sequential`` (algorithms) ->
passes ``int8``, ``int8_static``, ``weight_only`` -> ``sensitivity`` -> ``mixed`` -> ``qat`` -> ``qat_train``.

``from autolite.quant import Int8Dynamic, Int8Static, WeightOnly`` (imported lazily).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Int8Dynamic": "autolite.quant.int8", "Int8Static": "autolite.quant.int8_static",
            "WeightOnly": "autolite.quant.weight_only", "MixedPrecision": "autolite.quant.mixed",
            "DynamicInt8Linear": "autolite.quant.layers", "StaticInt8Linear": "autolite.quant.layers",
            "WeightOnlyInt8Linear": "autolite.quant.layers", "WeightOnlyInt4Linear": "autolite.quant.layers"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autolite.quant' has no attribute '{name}'")
