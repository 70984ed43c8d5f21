"""Fidelity metrics as pure functions of tensors, so each can be checked against a hand computation."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from autolite.errors import NumericsError


def cosine_per_row(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of matching rows of ``(N, H)`` tensors."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def top1_matches(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[int, int]:
    """(matches, total) of argmax agreement; ``mask`` (same leading shape) selects positions."""
    same = logits_a.argmax(-1) == logits_b.argmax(-1)
    if mask is not None:
        same = same[mask.bool()]
    return int(same.sum()), int(same.numel())


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                   shift: bool = True) -> tuple[float, int]:
    """Summed negative log-likelihood of the tokens and their count.

    Causal LMs (``shift=True``) predict token t+1 from position t; seq2seq decoders fed the
    right-shifted input predict token t at position t (``shift=False``).
    """
    if shift:
        logits, targets, mask = logits[:, :-1], input_ids[:, 1:], mask[:, 1:]
    else:
        targets = input_ids
    logprobs = F.log_softmax(logits.float(), dim=-1)
    nll = -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    keep = mask.bool()
    return float(nll[keep].sum()), int(keep.sum())


def perplexity(total_nll: float, count: int) -> float:
    return math.exp(total_nll / max(count, 1))


def accuracy_matches(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) for class logits ``(N, C)`` against integer labels ``(N,)``."""
    predictions = logits.argmax(-1).cpu()
    return int((predictions == labels.cpu()).sum()), int(labels.numel())


def check_finite(tensor: torch.Tensor | None, what: str) -> None:
    """Raise a NumericsError when a model output holds NaN or inf."""
    if tensor is not None and not torch.isfinite(tensor).all():
        raise NumericsError(f"{what} contains NaN/inf; the model or its compression is numerically broken")
