"""Named recipes usable as ``--recipe NAME``."""
from __future__ import annotations

from autolite.config import Recipe
from autolite.errors import RecipeError

PRESETS: dict[str, list[dict]] = {
    "fp32": [],
    "bf16": [{"pass": "precision", "dtype": "bf16"}],
    "fp16": [{"pass": "precision", "dtype": "fp16"}],
    "compile": [{"pass": "compile", "backend": "inductor", "freeze": True}],
    "bf16-compile": [{"pass": "precision", "dtype": "bf16"},
                     {"pass": "compile", "backend": "inductor", "freeze": True}],
    # The default: the fastest float recipe this machine runs natively (BF16 falls back to FP32 where
    # the CPU has no native BF16), compiled with freezing.
    "default": [{"pass": "precision", "dtype": "auto"},
                {"pass": "compile", "backend": "inductor", "freeze": True}],
    # Quantization engine (autolite.quant): INT8 dynamic on the fastest measured kernel; weight-only INT8/INT4.
    "int8-dynamic": [{"pass": "int8-dynamic"}],
    # ONNX Runtime backend (encoders): fused attention/LayerNorm/GELU, FP32 or dynamic INT8 (MLAS u8s8).
    "ort-fp32": [{"pass": "onnxruntime", "precision": "fp32"}],
    "ort-int8": [{"pass": "onnxruntime", "precision": "int8"}],
    "ort-int8-static": [{"pass": "onnxruntime", "precision": "int8-static"}],  # calibrated QDQ on the calib texts
    # OpenVINO backend (encoders; `pip install 'autolite[peers]'`): its default precision (BF16 where native) or
    # INT8 by NNCF post-training quantization on the calibration texts.
    "openvino": [{"pass": "openvino", "precision": "auto"}],
    "openvino-int8": [{"pass": "openvino", "precision": "int8"}],
    "w8": [{"pass": "weight-only", "bits": 8, "group_size": None, "embedding": True}],
    "w4g32": [{"pass": "weight-only", "bits": 4, "group_size": 32, "symmetric": False, "method": "gptq",
               "embedding": True}],
    "w4g64": [{"pass": "weight-only", "bits": 4, "group_size": 64, "symmetric": False, "method": "gptq",
               "embedding": True}],
    "w4g128": [{"pass": "weight-only", "bits": 4, "group_size": 128, "symmetric": False, "method": "gptq",
                "embedding": True}],
    "int8-static": [{"pass": "int8-static", "observer": "auto", "min_sqnr": 25.0}],
    # The engine's choice, measured per model and machine (cached): fastest dense recipe within fidelity bounds.
    "fast-dense": [{"pass": "fast-dense"}],
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def get_preset(name: str) -> Recipe:
    """The preset recipe called ``name``; a clear error lists the known ones."""
    if name not in PRESETS:
        raise RecipeError(f"unknown recipe '{name}': not a file and not a preset; presets: {', '.join(preset_names())}")
    return Recipe.from_dict({"passes": PRESETS[name]}, name=name)
