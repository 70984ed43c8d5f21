"""Model families: one module per family; a registry from HF ``model_type`` to its :class:`ArchSpec`."""
from __future__ import annotations

from torch import nn

from autolite.arch import bert, gpt2, llama, t5
from autolite.arch.base import ArchSpec, AttentionView, FFNView, LayerView, base_model
from autolite.errors import UnsupportedArchitectureError

FAMILIES: list[ArchSpec] = [*bert.SPECS, *t5.SPECS, *gpt2.SPECS, *llama.SPECS]
_BY_MODEL_TYPE = {mt: spec for spec in FAMILIES for mt in spec.model_types}

__all__ = ["ArchSpec", "AttentionView", "FFNView", "LayerView", "FAMILIES", "base_model",
           "family_for", "family_of", "supported_model_types"]


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(model_type: str | None) -> ArchSpec:
    """The family of an HF ``model_type``; a one-line error lists what is supported."""
    spec = _BY_MODEL_TYPE.get(model_type or "")
    if spec is None:
        families = "; ".join(f"{s.name} ({s.members})" for s in FAMILIES)
        raise UnsupportedArchitectureError(
            f"model type '{model_type}' is not supported; supported families: {families}")
    return spec


def family_of(model: nn.Module) -> ArchSpec:
    """The family of a loaded HF model."""
    config = getattr(model, "config", None)
    return family_for(getattr(config, "model_type", None))
