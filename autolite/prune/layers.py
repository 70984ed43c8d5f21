"""The ``prune-layers`` pass: remove whole transformer layers (by index, or the least influential).

Influence is ShortGPT's block influence: ``1 - cos(layer input, layer output)`` averaged over calibration
tokens; a layer that barely changes its input goes first. The HF config's layer count (and per-layer lists
such as ``layer_types``) is updated, so the saved model loads with plain ``transformers``.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from autolite.arch import ArchSpec, LayerView, base_model, family_of
from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.prune.calib import calib_batches, track
from autolite.prune.surgery import LAYOUT_KEY, record_layout

PER_LAYER_CONFIG_LISTS = ("layer_types",)


@dataclasses.dataclass
class PruneLayers(PassConfig):
    """Remove layers ``indices`` (ints, or "encoder.3"/"decoder.1" for T5), or the ``ratio`` least influential."""

    name = "prune-layers"
    indices: list | None = None
    ratio: float | None = None
    calib_samples: int = 32

    def __post_init__(self) -> None:
        if (self.indices is None) == (self.ratio is None):
            raise RecipeError("prune-layers: give exactly one of indices (layers to drop) or ratio (fraction)")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0 <= self.ratio < 1):
            raise RecipeError(f"prune-layers: ratio must be in [0, 1), got {self.ratio!r}")
        if self.indices is not None and not isinstance(self.indices, (list, tuple)):
            raise RecipeError("prune-layers: indices must be a list of layer indices")


def _key(view: LayerView) -> str:
    return f"{view.stack}.{view.index}"


def _resolve(config: PruneLayers, views: list[LayerView], family: ArchSpec) -> set[str]:
    keys = {_key(v) for v in views}
    chosen = set()
    for item in config.indices:
        key = str(item) if "." in str(item) else f"{views[0].stack}.{item}"
        if key not in keys:
            raise RecipeError(f"prune-layers: no layer {item}; this model has {', '.join(sorted(keys))}")
        chosen.add(key)
    return chosen


def block_influence(model: nn.Module, family: ArchSpec, views: list[LayerView], batches) -> dict[str, float]:
    """``1 - cos(input, output)`` of every layer, averaged over tokens (low = removable)."""
    scores: dict[str, float] = {}
    handles = []
    for view in views:
        def hook(module, args, kwargs, output, key=_key(view)):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(hidden_in.float(), hidden_out.float(), dim=-1).mean()
            scores[key] = scores.get(key, 0.0) + float(1 - cos)
        handles.append(view.module.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for batch in track(batches, "layer influence"):
                model(**batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    return scores


def remove_layers(model: nn.Module, family: ArchSpec, drop: set[str]) -> None:
    """Delete layers ``drop`` from their ModuleLists, renumber, and update the config's layer counts."""
    views = family.layers(model)
    for stack in sorted({v.stack for v in views}):
        stack_views = [v for v in views if v.stack == stack]
        keep = [v for v in stack_views if _key(v) not in drop]
        if not keep:
            raise RecipeError(f"prune-layers: that would remove every {stack} layer; keep at least one")
        container = _container(base_model(model), stack_views[0].module)
        if family.shared_position_bias and _key(stack_views[0]) in drop:
            _move_t5_bias(stack_views[0].module, keep[0].module)
        _trim_config_lists(model.config, len(stack_views), [v.index for v in keep])
        for position in range(len(container) - 1, -1, -1):
            del container[position]
        container.extend([v.module for v in keep])
        for new_index, view in enumerate(keep):
            for module in view.module.modules():
                if isinstance(getattr(module, "layer_idx", None), int):
                    module.layer_idx = new_index
        key = family.config_keys["decoder_layers" if stack == "decoder" and "decoder_layers" in
                                  family.config_keys else "layers"]
        setattr(model.config, key, len(keep))


def _container(base: nn.Module, first_layer: nn.Module) -> nn.ModuleList:
    for module in base.modules():
        if isinstance(module, nn.ModuleList) and any(m is first_layer for m in module):
            return module
    raise RecipeError("prune-layers: cannot find the layer list of this model")


def _move_t5_bias(old_first: nn.Module, new_first: nn.Module) -> None:
    """T5 computes the relative-position bias in its first block only: hand it to the new first block."""
    old_attn, new_attn = old_first.layer[0].SelfAttention, new_first.layer[0].SelfAttention
    new_attn.relative_attention_bias = old_attn.relative_attention_bias
    new_attn.has_relative_attention_bias = True


def _trim_config_lists(config, count: int, kept: list[int]) -> None:
    """Per-layer config lists (``layer_types``...) keep the entries of the kept layers."""
    for name in PER_LAYER_CONFIG_LISTS:
        value = getattr(config, name, None)
        if isinstance(value, list) and len(value) == count:
            setattr(config, name, [value[i] for i in kept])


@register_pass(PruneLayers)
def apply_prune_layers(model: nn.Module, config: PruneLayers, ctx: PassContext) -> nn.Module:
    """Drop the chosen layers; the config's layer count follows."""
    family = ctx.family or family_of(model)
    views = family.layers(model)
    before = sum(p.numel() for p in model.parameters())
    if config.indices is not None:
        drop = _resolve(config, views, family)
    else:
        batches = calib_batches(model, family, ctx, samples=config.calib_samples)
        scores = block_influence(model, family, views, batches)
        drop = set(sorted(scores, key=scores.get)[:round(config.ratio * len(views))])
        ctx.note("prune-layers: block influence " + ", ".join(f"{k} {v / len(batches):.3f}" for k, v in scores.items()))
    remove_layers(model, family, drop)
    if getattr(model.config, LAYOUT_KEY, None):
        record_layout(family, model)
    ctx.note(f"prune-layers: removed {len(drop)} of {len(views)} layers ({', '.join(sorted(drop)) or 'none'}); "
             f"parameters {before:,} -> {sum(p.numel() for p in model.parameters()):,}; config layer count updated")
    return model
