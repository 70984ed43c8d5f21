"""Rebuild a model written by ``autolite compress``: replay its recipe around the stored weights."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file

from autolite.errors import CorruptWeightsError, ModelLoadError
from autolite.passes import PassContext, applied_recipe, handler_for

log = logging.getLogger(__name__)


def load_compressed(directory: Path, model_cls: type) -> torch.nn.Module:
    """Build the skeleton from config, let each pass ``restore`` its modules, load the weights, then
    ``after_load`` (e.g. recompile). Plain (float, pruned) weights go through ``from_pretrained``."""
    config = transformers.AutoConfig.from_pretrained(str(directory))
    recipe = applied_recipe(_ConfigHolder(config))
    structural = [c for c in recipe.passes if handler_for(c).restore is not None]
    ctx = PassContext()
    if structural:
        model = _skeleton(model_cls, config)
        for pass_config in structural:
            model = handler_for(pass_config).restore(model, pass_config, ctx)
        _load_weights(model, directory)
    else:
        model = model_cls.from_pretrained(str(directory), dtype="auto")
    model.config.autolite = config.autolite
    model.eval()
    for pass_config in recipe.passes:
        after_load = handler_for(pass_config).after_load
        if after_load is not None:
            model = after_load(model, pass_config, ctx)
    return model


class _ConfigHolder:
    """Lets ``applied_recipe`` read a bare config."""

    def __init__(self, config) -> None:
        self.config = config


def _skeleton(model_cls: type, config) -> torch.nn.Module:
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    model = model_cls._from_config(config, dtype=dtype) if dtype is not None else model_cls._from_config(config)
    return model.eval()


def _load_weights(model: torch.nn.Module, directory: Path) -> None:
    state: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(path)))
    state = _hf_names(model, state)
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(model, "_tied_weights_keys", None) or []) | set(getattr(model, "all_tied_weights_keys", {}))
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise CorruptWeightsError(
            f"{directory}: weights do not match the recipe's model (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); was the directory edited? re-run `autolite compress`")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if not state:
        raise ModelLoadError(f"{directory} holds no weights")


def _hf_names(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo the key renames ``save_pretrained`` applies for some model types (GPT-NeoX saves ``lm_head`` as
    ``embed_out``), as ``from_pretrained`` does: the same transformers mapping, renamings only."""
    # lazy: transformers' loading internals pull accelerate and sympy (~1 s of CLI start-up); only a reload needs them
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange, WeightRenaming, apply_renamings

    renamings = [t for t in get_model_conversion_mapping(model, add_legacy=False)
                 if isinstance(t, WeightRenaming) and not isinstance(t, PrefixChange)]
    if not renamings:
        return state
    return {apply_renamings(key, renamings): value for key, value in state.items()}
