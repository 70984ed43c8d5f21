"""Model families: one module per family; a registry from HF ``model_type`` to its :class:`ArchSpec`."""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from autolite.arch import bert, gpt2, llama, t5
from autolite.arch.generic import generic_spec, is_text_model_type
from autolite.arch.base import ArchSpec, AttentionView, FFNView, LayerView, base_model, is_conv1d
from autolite.errors import UnsupportedArchitectureError

FAMILIES: list[ArchSpec] = [*bert.SPECS, *t5.SPECS, *gpt2.SPECS, *llama.SPECS]
_BY_MODEL_TYPE = {mt: spec for spec in FAMILIES for mt in spec.model_types}

__all__ = ["ArchSpec", "AttentionView", "FFNView", "LayerView", "FAMILIES", "base_model",
           "encoder_view", "family_for", "family_of", "is_conv1d", "supported_model_types"]


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def family_for(model_type: str | None, config: Any = None) -> ArchSpec:
    """The family of an HF ``model_type`` (``config``: its HF config or config.json dict, which tells a
    generic model's kind); a text model type without a family module gets the generic spec
    (``autolite.arch.generic``); anything else is a one-line error that lists what is supported."""
    spec = _BY_MODEL_TYPE.get(model_type or "")
    if spec is not None:
        return encoder_view(spec) if spec.kind == "seq2seq" and _encoder_stack(config) else spec
    families = "; ".join(f"{s.name} ({s.members})" for s in FAMILIES)
    if is_text_model_type(model_type):
        return generic_spec(model_type, config, families)
    raise UnsupportedArchitectureError(f"model type '{model_type}' is not supported; supported families: {families}")


def family_of(model: nn.Module) -> ArchSpec:
    """The family of a loaded HF model; the encoder stack of a seq2seq family alone (``T5EncoderModel``) is
    that family seen as an encoder (:func:`encoder_view`)."""
    config = getattr(model, "config", None)
    return family_for(getattr(config, "model_type", None), _with_class(config, model))


def encoder_view(spec: ArchSpec) -> ArchSpec:
    """A seq2seq family's encoder stack as an encoder family (the passes then find the encoder layers only)."""
    return dataclasses.replace(spec, name=f"{spec.name}-encoder", kind="encoder")


def _encoder_stack(config: Any) -> bool:
    """True when the model class is a seq2seq family's encoder stack alone (``T5EncoderModel``)."""
    names = (config.get("architectures") if isinstance(config, dict) else getattr(config, "architectures", None))
    return bool(names) and all(str(name).endswith("EncoderModel") for name in names)


def _with_class(config: Any, model: nn.Module) -> dict[str, Any]:
    """What decides a generic model's kind: the loaded class counts, not only the saved ``architectures``."""
    return {"architectures": [type(model).__name__], "is_encoder_decoder": getattr(config, "is_encoder_decoder", False)}
