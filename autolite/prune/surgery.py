"""Physical removal of heads and neurons, the HF config kept true, and the layout replayed on load.

Every structural pass records the resulting per-layer sizes in ``config.autolite_layout``
(``{"encoder.0": {"heads": 7, "kv_heads": 7, "ffn": 1536}, ...}``). When the family's HF config can
express the result (uniform sizes, and a config field that sets them without changing the head size),
the config is updated too, so plain ``transformers`` rebuilds the smaller model; otherwise
``autolite.load`` replays the layout on the skeleton before reading the weights.
"""
from __future__ import annotations

import torch
from torch import nn

from autolite.arch import ArchSpec, family_of
from autolite.prune.structure import HeadGroup, NeuronGroup, channel_index, head_groups, neuron_groups, shrink_part

LAYOUT_KEY = "autolite_layout"
_HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads")
_WIDTH_ATTRS = ("all_head_size", "inner_dim", "split_size")


def remove_heads(group: HeadGroup, keep: torch.Tensor) -> None:
    """Keep query heads ``keep`` of one attention block (whole KV groups for grouped-query attention)."""
    keep = keep.sort().values.to(torch.long)
    g, d = group.group_size, group.head_dim
    keep_kv = torch.unique(keep // g)
    assert len(keep) == len(keep_kv) * g, "grouped-query attention must keep whole KV groups"
    jobs = [(p, channel_index(keep, d), group.num_heads * d) for p in group.q_parts if p.axis != "emb"]
    jobs += [(p, keep, group.num_heads) for p in group.q_parts if p.axis == "emb"]
    if group.view.qkv is None:
        jobs += [(p, channel_index(keep_kv, d), group.num_kv_heads * d) for p in group.kv_parts]
    else:  # fused: k and v have as many heads as q
        jobs += [(p, channel_index(keep, d), group.num_heads * d) for p in group.kv_parts]
    for part, index, span in sorted(jobs, key=lambda job: -job[0].offset):  # fused: last segment first
        shrink_part(part, index, span)
    _set_head_attrs(group.view.module, len(keep), len(keep_kv), d)


def _set_head_attrs(module: nn.Module, heads: int, kv_heads: int, head_dim: int) -> None:
    for obj in (module, getattr(module, "self", None)):
        if obj is None:
            continue
        for attr in _HEAD_ATTRS:
            if isinstance(getattr(obj, attr, None), int):
                setattr(obj, attr, heads)
        for attr in _WIDTH_ATTRS:
            if isinstance(getattr(obj, attr, None), int):
                setattr(obj, attr, heads * head_dim)
        if isinstance(getattr(obj, "num_key_value_heads", None), int):
            obj.num_key_value_heads = kv_heads


def remove_neurons(group: NeuronGroup, keep: torch.Tensor) -> None:
    """Keep intermediate neurons ``keep`` of one FFN (up/gate rows, down columns)."""
    keep = keep.sort().values.to(torch.long)
    for part in sorted(group.parts, key=lambda p: -p.offset):
        shrink_part(part, keep, group.size)
    if isinstance(getattr(group.view.module, "intermediate_size", None), int):
        group.view.module.intermediate_size = len(keep)


def current_layout(family: ArchSpec, model: nn.Module) -> dict[str, dict[str, int]]:
    """Per-layer sizes as the weights say now."""
    layout: dict[str, dict[str, int]] = {}
    for group in head_groups(family, model):
        entry = layout.setdefault(group.key.replace(".cross", ""), {})
        prefix = "cross_" if group.key.endswith(".cross") else ""
        entry[prefix + "heads"], entry[prefix + "kv_heads"] = group.num_heads, group.num_kv_heads
    for group in neuron_groups(family, model):
        layout.setdefault(group.key, {})["ffn"] = group.size
    return layout


def record_layout(family: ArchSpec, model: nn.Module) -> dict[str, dict[str, int]]:
    """Write the current layout into the config and update the HF size fields where they can express it."""
    layout = current_layout(family, model)
    config = model.config
    setattr(config, LAYOUT_KEY, layout)
    keys = family.config_keys
    ffn_sizes = {entry["ffn"] for entry in layout.values()}
    if len(ffn_sizes) == 1 and keys.get("intermediate"):
        setattr(config, keys["intermediate"], ffn_sizes.pop())
    heads = {(e["heads"], e["kv_heads"]) for e in layout.values()}
    heads |= {(e["cross_heads"], e["cross_kv_heads"]) for e in layout.values() if "cross_heads" in e}
    if len(heads) == 1 and family.head_count_in_config:
        n, kv = heads.pop()
        head_dim = head_groups(family, model)[0].head_dim
        setattr(config, keys["heads"], n)
        if keys.get("kv_heads"):
            setattr(config, keys["kv_heads"], kv)
        if keys.get("head_dim"):  # written where the config would otherwise derive it from the head count
            setattr(config, keys["head_dim"], head_dim)
    return layout


def config_expresses(family: ArchSpec, model: nn.Module) -> bool:
    """Whether plain ``transformers`` rebuilds the current shapes from the HF config alone."""
    return why_not_plain(family, model) is None


def why_not_plain(family: ArchSpec, model: nn.Module) -> str | None:
    """Why the HF config cannot express the current shapes (None when it can)."""
    config, keys = model.config, family.config_keys
    heads = getattr(config, keys["heads"])
    kv = getattr(config, keys.get("kv_heads", ""), None) or heads
    ffn = getattr(config, keys["intermediate"], None) or 4 * getattr(config, keys["hidden"])
    layout = current_layout(family, model).values()
    pairs = {(e["heads"], e["kv_heads"]) for e in layout}
    pairs |= {(e["cross_heads"], e["cross_kv_heads"]) for e in layout if "cross_heads" in e}
    if pairs != {(heads, kv)}:
        if not family.head_count_in_config:
            return (f"{family.name}'s HF config derives the head size from the head count and transformers 5 "
                    "has no pruned_heads, so fewer heads cannot be written into config.json")
        return "the layers keep different numbers of heads and the HF config has one head count"
    if {e["ffn"] for e in layout} != {ffn}:
        return "the layers keep different FFN sizes and the HF config has one intermediate size"
    return None


def restore_layout(model: nn.Module, config, ctx) -> nn.Module:
    """``restore`` hook: shrink a freshly built skeleton to the recorded layout (weights are read after)."""
    layout = getattr(model.config, LAYOUT_KEY, None)
    if not layout:
        return model
    family = family_of(model)
    for group in head_groups(family, model):
        entry = layout.get(group.key.replace(".cross", ""), {})
        want = entry.get("cross_heads" if group.key.endswith(".cross") else "heads", group.num_heads)
        if want != group.num_heads:
            kv = entry.get("cross_kv_heads" if group.key.endswith(".cross") else "kv_heads", want)
            remove_heads(group, torch.arange(kv * group.group_size) if group.view.qkv is None
                         else torch.arange(want))
    for group in neuron_groups(family, model):
        want = layout.get(group.key, {}).get("ffn", group.size)
        if want != group.size:
            remove_neurons(group, torch.arange(want))
    return model
