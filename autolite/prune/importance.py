"""Importance scores for attention heads and FFN neurons, as pluggable callables.

An importance is ``fn(model, family, batches, target) -> {group key: scores}`` where ``target`` is
"heads" (one score per query head) or "ffn" (one per intermediate neuron); low scores are pruned first.
Register your own with :func:`register_importance`.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from autolite.arch import ArchSpec, is_conv1d
from autolite.errors import RecipeError
from autolite.prune.calib import CalibBatch, calib_loss, has_head, track
from autolite.prune.structure import Part, axis_tensors, head_groups, neuron_groups

Scores = dict[str, torch.Tensor]
Importance = Callable[[torch.nn.Module, ArchSpec, list[CalibBatch], str], Scores]
IMPORTANCE: dict[str, Importance] = {}


def register_importance(name: str) -> Callable[[Importance], Importance]:
    def decorator(fn: Importance) -> Importance:
        IMPORTANCE[name] = fn
        return fn
    return decorator


def get_importance(name: str) -> Importance:
    if name not in IMPORTANCE:
        raise RecipeError(f"unknown importance '{name}'; known: {', '.join(sorted(IMPORTANCE))}")
    return IMPORTANCE[name]


def _groups(family: ArchSpec, model: torch.nn.Module, target: str) -> list:
    return head_groups(family, model) if target == "heads" else neuron_groups(family, model)


# ---- weight-based: magnitude and first-order Taylor -------------------------------------------------
def _unit_sums(part: Part, units: int, width: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(units)
    if part.axis == "emb":
        width = 1
    for tensor, dim in axis_tensors(part):
        values = fn(tensor).narrow(dim, part.offset, units * width).movedim(dim, 0)
        total += values.reshape(units, -1).float().sum(1).cpu()
    return total


def weight_scores(model: torch.nn.Module, family: ArchSpec, target: str,
                  fn: Callable[[torch.Tensor], torch.Tensor]) -> Scores:
    """Sum ``fn(weight)`` over every weight that belongs to each head/neuron."""
    scores: Scores = {}
    with torch.no_grad():
        for group in _groups(family, model, target):
            if target == "ffn":
                scores[group.key] = sum(_unit_sums(p, group.size, 1, fn) for p in group.parts)
                continue
            kv_units = group.num_heads if group.view.qkv is not None else group.num_kv_heads
            q = sum(_unit_sums(p, group.num_heads, group.head_dim, fn) for p in group.q_parts)
            kv = sum(_unit_sums(p, kv_units, group.head_dim, fn) for p in group.kv_parts)
            repeat = group.num_heads // kv_units
            scores[group.key] = q + kv.repeat_interleave(repeat) / repeat
    return scores


@register_importance("magnitude")
def magnitude(model, family, batches, target, p: int = 1) -> Scores:
    """L1 (``p=1``) or squared-L2 (``p=2``) norm of each head's/neuron's weights; needs no data."""
    return weight_scores(model, family, target, (lambda w: w.abs()) if p == 1 else (lambda w: w * w))


@register_importance("l2")
def magnitude_l2(model, family, batches, target) -> Scores:
    return magnitude(model, family, batches, target, p=2)


@register_importance("taylor")
def taylor(model, family, batches, target) -> Scores:
    """First-order Taylor ``|w * dL/dw|`` summed per head/neuron, gradients accumulated over the batches."""
    model.zero_grad(set_to_none=True)
    for batch in track(batches, f"taylor scores ({target})"):
        calib_loss(model, family, batch).backward()
    scores = weight_scores(model, family, target,
                           lambda w: (w * w.grad).abs() if w.grad is not None else torch.zeros_like(w))
    model.zero_grad(set_to_none=True)
    return scores


# ---- activation-based: masks on the input of o_proj / down_proj ------------------------------------
@contextlib.contextmanager
def unit_masks(model: torch.nn.Module, family: ArchSpec, target: str,
               requires_grad: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Multiply each head's (neuron's) output by a mask entry; yields ``{key: mask}`` (ones)."""
    masks, handles = {}, []
    for group in _groups(family, model, target):
        units = group.num_heads if target == "heads" else group.size
        module = group.view.o if target == "heads" else group.view.down
        mask = torch.ones(units, requires_grad=requires_grad)
        masks[group.key] = mask

        def hook(mod, args, mask=mask, units=units):
            x = args[0]
            scaled = (x.unflatten(-1, (units, -1)) * mask.to(x.dtype)[:, None]).flatten(-2)
            return (scaled, *args[1:])
        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield masks
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Turn off parameter gradients (only mask gradients are wanted)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@register_importance("head_mask")
def mask_gradient(model, family, batches, target) -> Scores:
    """Michel et al. (2019): ``|dL/dmask|`` of a unit mask on each head (neuron), summed over batches."""
    scores: Scores = {}
    with frozen(model), unit_masks(model, family, target, requires_grad=True) as masks:
        for batch in track(batches, f"mask-gradient scores ({target})"):
            loss = calib_loss(model, family, batch)
            grads = torch.autograd.grad(loss, list(masks.values()), allow_unused=True)
            for key, grad in zip(masks, grads):
                value = grad.abs() if grad is not None else torch.zeros_like(masks[key])
                scores[key] = scores.get(key, 0) + value.detach()
    return scores


@register_importance("wanda")
def wanda(model, family, batches, target) -> Scores:
    """Sun et al. (2023): ``|W| * ||X||`` on the input channels of o_proj / down_proj, summed per unit."""
    groups = _groups(family, model, target)
    sumsq: dict[str, torch.Tensor] = {}
    handles = []
    for group in groups:
        module = group.view.o if target == "heads" else group.view.down

        def hook(mod, args, key=group.key):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sumsq[key] = sumsq.get(key, 0) + (x * x).sum(0).cpu()
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in track(batches, f"wanda scores ({target})"):
                model(**batch.inputs)
    finally:
        for handle in handles:
            handle.remove()
    scores = {}
    for group in groups:
        module = group.view.o if target == "heads" else group.view.down
        weight = module.weight.detach().abs().float().cpu()
        col = weight.sum(1) if is_conv1d(module) else weight.sum(0)
        per_channel = col * sumsq[group.key].sqrt()
        units = group.num_heads if target == "heads" else group.size
        scores[group.key] = per_channel.reshape(units, -1).sum(1)
    return scores


@register_importance("attention")
def attention_confidence(model, family, batches, target) -> Scores:
    """Per head, the mean over queries of the largest attention weight ("confidence", Voita et al. 2019).

    The original's "mean |attention weight|" is constant (each softmax row sums to one), so the peak
    weight is used instead: a head that attends uniformly scores lowest.
    """
    if target != "heads":
        raise RecipeError("importance 'attention' scores heads only; use taylor, head_mask, wanda or magnitude for FFN")
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    keys = [g.key for g in head_groups(family, model)]
    scores: Scores = {}
    try:
        with torch.no_grad():
            for batch in track(batches, "attention scores"):
                for key, probs in zip(keys, _attention_maps(model, family, batch)):
                    scores[key] = scores.get(key, 0) + probs.float().amax(-1).mean((0, 2)).cpu()
    finally:
        model.set_attn_implementation(previous)
    return scores


def _attention_maps(model, family, batch) -> list[torch.Tensor]:
    """Attention probabilities in the order of :func:`head_groups` (T5: encoder, then decoder self/cross)."""
    out = model(**batch.inputs, output_attentions=True)
    if family.kind != "seq2seq":
        return list(out.attentions)
    decoder = [m for pair in zip(out.decoder_attentions, out.cross_attentions) for m in pair]
    return list(out.encoder_attentions) + decoder


@register_importance("ablation")
def ablation(model, family, batches, target) -> Scores:
    """Measured: mean squared change of the model's output when one head is removed (masked to zero)."""
    if target != "heads":
        raise RecipeError("importance 'ablation' scores heads only (one forward per unit); use taylor for FFN")
    batches = batches[:2]
    with torch.no_grad(), unit_masks(model, family, target) as masks:
        reference = [_output(model, batch) for batch in batches]
        jobs = [(key, h) for key, mask in masks.items() for h in range(len(mask))]
        scores = {key: torch.zeros(len(mask)) for key, mask in masks.items()}
        for key, h in track(jobs, "ablation scores"):
            masks[key][h] = 0.0
            change = sum(float((_output(model, b) - ref).pow(2).mean()) for b, ref in zip(batches, reference))
            masks[key][h] = 1.0
            scores[key][h] = change
    return scores


def _output(model: torch.nn.Module, batch: CalibBatch) -> torch.Tensor:
    out = model(**batch.inputs)
    logits = getattr(out, "logits", None)
    return (logits if logits is not None and has_head(model) else out.last_hidden_state).float()
