"""Models without a family module: any text model of transformers' registry built from ``nn.Linear``.

Such a model gets a generic :class:`ArchSpec`: its kind (encoder, decoder, seq2seq) from transformers'
task registries and the model's class, and no layer map. The generic passes (precision, compile, INT8
dynamic/static, weight-only round-to-nearest, ONNX Runtime where the model exports, ``hf`` export) need
only the kind; family-specific passes (pruning, students, sensitivity and mixed precision, GPTQ
calibration) ask for the layers and get a one-line refusal naming the supported families.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn
from transformers.models.auto import modeling_auto

from autolite.arch.base import ArchSpec, LayerView
from autolite.errors import UnsupportedArchitectureError

_SEQ2SEQ = modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
_MASKED = modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
_CAUSAL = modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
_TEXT = (_SEQ2SEQ, _MASKED, _CAUSAL, modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)
GENERIC_PASSES = "precision, compile, int8-dynamic, int8-static, weight-only (rtn), onnxruntime, hf export"


def is_text_model_type(model_type: str | None) -> bool:
    """True when transformers registers ``model_type`` for a text task (LM, masked LM, seq2seq, classification)."""
    return bool(model_type) and any(model_type in mapping for mapping in _TEXT)


def generic_kind(model_type: str, config: Any = None) -> str:
    """encoder | decoder | seq2seq of a text model type (its class names in ``architectures`` decide first)."""
    names = " ".join(_get(config, "architectures") or [])
    if _get(config, "is_encoder_decoder") or "ConditionalGeneration" in names or "Seq2SeqLM" in names:
        return "seq2seq"
    if "CausalLM" in names or "LMHead" in names:
        return "decoder"
    if "MaskedLM" in names or names:  # a base model or a classification head: read as an encoder
        return "encoder"
    if model_type in _SEQ2SEQ:
        return "seq2seq"
    return "encoder" if model_type in _MASKED or model_type not in _CAUSAL else "decoder"


def generic_spec(model_type: str, config: Any, supported: str) -> ArchSpec:
    """The spec of a text model type without a family module (``supported``: the families, for refusals)."""
    return ArchSpec(name=model_type, kind=generic_kind(model_type, config), model_types=(model_type,),
                    find_layers=_refuse(model_type, supported), config_keys={},
                    members=f"{model_type} (generic passes only)", generic=True)


def _refuse(model_type: str, supported: str) -> Callable[[nn.Module], list[LayerView]]:
    def find_layers(base: nn.Module) -> list[LayerView]:
        raise UnsupportedArchitectureError(
            f"model type '{model_type}' is not supported; supported families: {supported} (this pass needs a "
            f"family's layer map; any {model_type} model runs the generic passes: {GENERIC_PASSES})")
    return find_layers


def _get(config: Any, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)
