"""Least-squares reconstruction after a structural cut: refit the output projection on the kept channels.

Removing heads (neurons) deletes input channels of ``o_proj`` (``down_proj``). Instead of keeping the surviving
columns as they were, solve, on calibration activations ``X`` of the unpruned block,
``min ||X_keep W'^T + b' - X W^T - b||^2 + lambda ||W' - W_keep||^2`` (ridge towards the plain cut). That moves
what the removed channels contributed, as far as the kept ones can express it, into the kept columns (and the
bias, where the layer has one: FLAP's mean compensation, An et al. 2024, generalised; Kwon et al. 2022 refit
similarly).
Only the ``X^T X`` Gram matrix of each projection's input is collected (one forward pass, no gradients); the
ridge strength is chosen by validation between two halves of the calibration batches (the plain cut is a
candidate too).
"""
from __future__ import annotations

import torch

from autolite.arch import ArchSpec, is_conv1d
from autolite.prune.calib import CalibBatch, track
from autolite.prune.structure import channel_index, head_groups, neuron_groups

RIDGES = (1e-3, 1e-2, 1e-1, 1.0)  # candidate strengths, relative to the mean diagonal of the kept Gram block
GRAM_BYTES = 1 << 30  # Gram matrices held at once; more blocks are collected (and cut) in several passes


def _projection(group, target: str) -> torch.nn.Module:
    return group.view.o if target == "heads" else group.view.down


def collect(model: torch.nn.Module, family: ArchSpec, batches: list[CalibBatch], target: str,
            keys: set[str]) -> dict[str, dict]:
    """Per block in ``keys``: two input Gram matrices (even and odd batches; a ones column appended when the
    projection has a bias) and a copy of the full projection (weight as [in, out], bias)."""
    groups = [g for g in (head_groups(family, model) if target == "heads" else neuron_groups(family, model))
              if g.key in keys]
    state, handles, turn = {}, [], [0]
    for group in groups:
        module = _projection(group, target)
        weight = module.weight.detach().float()
        bias = getattr(module, "bias", None)
        state[group.key] = {"weight": (weight if is_conv1d(module) else weight.T).clone(),  # [in, out]
                            "bias": None if bias is None else bias.detach().float().clone(), "grams": [0.0, 0.0]}

        def hook(mod, args, key=group.key):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            if state[key]["bias"] is not None:
                x = torch.cat([x, torch.ones(len(x), 1, device=x.device)], 1)
            state[key]["grams"][turn[0] % 2] = state[key]["grams"][turn[0] % 2] + x.T @ x
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for batch in track(batches, f"reconstruction statistics ({target})"):
                model(**batch.inputs)
                turn[0] += 1
    finally:
        for handle in handles:
            handle.remove()
    return state


def refit(group, target: str, keep: torch.Tensor, state: dict) -> float | None:
    """Refit one cut block's projection (weight and bias) with the ridge strength that predicts best.

    The strength is chosen by two-fold validation between the even and odd calibration batches among
    ``RIDGES`` and the plain cut (infinite ridge), so too little calibration text never makes it worse than
    the plain cut. Returns the chosen strength (None: plain cut kept)."""
    module = _projection(group, target)
    grams = [g.double() for g in state["grams"] if torch.is_tensor(g)]
    if len(grams) < 2:
        return None
    keep = keep.sort().values.to(torch.long)
    channels = channel_index(keep, group.head_dim) if target == "heads" else keep
    full_w, bias = state["weight"].double(), state["bias"]
    index = channels.to(grams[0].device)
    if bias is not None:  # the ones column: the bias absorbs the removed channels' mean contribution
        index = torch.cat([index, torch.tensor([full_w.shape[0]], device=index.device)])
        full_w = torch.cat([full_w, bias.double()[None, :]], 0)
    full_w = full_w.to(grams[0].device)
    errors = {r: sum(_error(_solve(grams[i], index, full_w, r), grams[1 - i], index, full_w) for i in (0, 1))
              for r in (*RIDGES, None)}
    best = min(errors, key=errors.get)
    if best is None:
        return None
    solution = _solve(grams[0] + grams[1], index, full_w, best)  # [kept (+1), out]
    new_w = solution[:len(channels)]
    with torch.no_grad():
        module.weight.copy_((new_w if is_conv1d(module) else new_w.T).to(module.weight.dtype))
        if bias is not None:
            module.bias.copy_(solution[-1].to(module.bias.dtype))
    return best


def _solve(gram: torch.Tensor, index: torch.Tensor, full_w: torch.Tensor, ridge: float | None) -> torch.Tensor:
    """argmin ||X_idx W' - X W||^2 + ridge * mean diag * ||W' - W_idx||^2 (None: the plain cut W_idx)."""
    kept_w = full_w.index_select(0, index)
    if ridge is None:
        return kept_w
    a = gram.index_select(0, index).index_select(1, index)
    strength = ridge * a.diagonal().mean().clamp(min=1e-12)
    a = a + strength * torch.eye(len(index), dtype=a.dtype, device=a.device)
    return torch.linalg.solve(a, gram.index_select(0, index) @ full_w + strength * kept_w)


def _error(w: torch.Tensor, gram: torch.Tensor, index: torch.Tensor, full_w: torch.Tensor) -> float:
    """||X_idx W' - X W||^2 on the tokens whose Gram is ``gram``, up to a constant shared by every W'."""
    g_kk = gram.index_select(0, index).index_select(1, index)
    return float((w * (g_kk @ w)).sum() - 2 * (w * (gram.index_select(0, index) @ full_w)).sum())


def chunks(groups: list, target: str) -> list[list]:
    """``groups`` split so that each chunk's Gram matrices fit in ``GRAM_BYTES`` (float32)."""
    out: list[list] = [[]]
    used = 0
    for group in groups:
        module = _projection(group, target)
        width = module.weight.shape[0 if is_conv1d(module) else 1] + 1
        size = 4 * width * width
        if out[-1] and used + size > GRAM_BYTES:
            out.append([])
            used = 0
        out[-1].append(group)
        used += size
    return out
