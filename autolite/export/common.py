"""What every exporter shares: the result type, the unsupported-export error, model checks."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from autolite.errors import UnsupportedExportError
from autolite.export.validate import Validation
from autolite.passes import applied_recipe
from autolite.weights import custom_modules

FORMATS = ("hf", "st", "onnx", "mlx", "gguf")


@dataclasses.dataclass
class ExportResult:
    """Where an export went, in which format and precision, and how it compared with its source."""

    path: Path
    format: str
    precision: str
    validation: Validation | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "format": self.format, "precision": self.precision,
                "validation": self.validation.to_dict() if self.validation else None, "notes": self.notes}


def recipe_passes(model: torch.nn.Module) -> list[Any]:
    """The pass configs recorded on the model (empty for a plain model)."""
    if not getattr(getattr(model, "config", None), "autolite", None):
        return []
    return applied_recipe(model).passes


def require_plain(model: torch.nn.Module, fmt: str, supported: str) -> None:
    """Raise :class:`UnsupportedExportError` when the model holds modules ``fmt`` cannot take."""
    found = custom_modules(model)
    if found:
        passes = ", ".join(p.name for p in recipe_passes(model)) or "unknown"
        raise UnsupportedExportError(
            f"{fmt} export cannot take autolite's quantized/custom modules ({found[0]}"
            f"{f' and {len(found) - 1} more' if len(found) > 1 else ''}; recipe: {passes}); "
            f"{fmt} supports {supported}; export the float or pruned model, or use format 'hf'")


def float_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's floating-point parameters."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def rope_theta(config: Any) -> float | None:
    """A Llama-like config's RoPE base, wherever transformers keeps it (v5: ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    value = getattr(config, "rope_theta", None)
    return float(value) if value is not None else None


def add_top_level_rope_theta(directory: Path, config: Any) -> None:
    """Write fields other tools read at the top of config.json: ``rope_theta`` (transformers 5 nests it
    under ``rope_parameters``; mlx-lm and others otherwise use a wrong default and emit garbage) and GPT-2's
    ``n_ctx`` (= ``n_positions``, required by mlx-lm)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return
    data = json.loads(path.read_text())
    extra = {"rope_theta": rope_theta(config)}
    if data.get("model_type") == "gpt2":
        extra["n_ctx"] = data.get("n_positions")
    extra = {k: v for k, v in extra.items() if v is not None and k not in data}
    if extra:
        data.update(extra)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
