"""Distillation losses as pure functions of tensors, and :class:`DistillLoss` combining them.

* ``kd_loss``: Hinton's soft-target loss ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, y)`` with
  ``p = softmax(logits / T)``; without labels only the ``T^2 * KL`` term.
* ``hidden_mse_loss``: token-wise MSE of hidden states, through a learned projection when widths differ;
  ``layer_mse_loss`` averages it over mapped (student layer, teacher layer) pairs, each normalized by the
  teacher layer's mean square so that layers of different scales weigh alike (TinyBERT-style).
* ``relation_loss``: MiniLM(v2)-style self-attention relation alignment: KL between the teacher's and the
  student's ``softmax(X X^T / sqrt(d))`` for X in {Q, K, V} of one layer, split into the same number of
  relation heads on both sides (so head counts and widths may differ).
* ``embedding_cosine_loss``: ``1 - cos`` of mean-pooled sentence embeddings (embedding models).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autolite.eval.forward import mean_pool


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
            alpha: float = 0.5, labels: torch.Tensor | None = None, mask: torch.Tensor | None = None
            ) -> torch.Tensor:
    """Soft-target KD loss; logits ``(..., C)``; ``mask`` (leading shape) selects positions; labels use -100 to skip."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (...,) per position
    kl = kl[mask.bool()].mean() if mask is not None else kl.mean()
    soft = t * t * kl
    if labels is None:
        return soft
    ce = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), labels.reshape(-1),
                         ignore_index=-100)
    return alpha * soft + (1.0 - alpha) * ce


def hidden_mse_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                    projection: nn.Module | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE of ``(B, T, H)`` hidden states over real tokens; ``projection`` maps student width to teacher width."""
    student = projection(student_hidden) if projection is not None else student_hidden
    diff = (student.float() - teacher_hidden.float()).pow(2).mean(-1)  # (B, T)
    return diff[mask.bool()].mean() if mask is not None else diff.mean()


def layer_mse_loss(student_layers: list[torch.Tensor], teacher_layers: list[torch.Tensor],
                   pairs: list[tuple[int, int]], projection: nn.Module | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over ``pairs`` (student index, teacher index into the hidden-state lists) of the relative MSE."""
    parts = []
    for s_index, t_index in pairs:
        teacher = teacher_layers[t_index].float()
        scale = teacher.pow(2).mean(-1)
        scale = (scale[mask.bool()] if mask is not None else scale).mean().clamp(min=1e-6)
        parts.append(hidden_mse_loss(student_layers[s_index], teacher, projection, mask) / scale)
    return torch.stack(parts).mean()


def embedding_cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                          mask: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` of mean-pooled ``(B, T, H)`` hidden states (widths must match)."""
    s = mean_pool(student_hidden.float(), mask)
    t = mean_pool(teacher_hidden.float(), mask)
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


def relation_loss(student_x: torch.Tensor, teacher_x: torch.Tensor, mask: torch.Tensor,
                  relation_heads: int = 4) -> torch.Tensor:
    """MiniLMv2 relation KL for one of Q/K/V: inputs ``(B, T, H_s)`` / ``(B, T, H_t)``, mask ``(B, T)``."""
    log_r_s = _relations(student_x, mask, relation_heads)
    log_r_t = _relations(teacher_x, mask, relation_heads)
    kl = (log_r_t.exp() * (log_r_t - log_r_s)).sum(-1)  # (B, R, T)
    keep = mask.bool().unsqueeze(1).expand_as(kl)
    return kl[keep].mean()


def _relations(x: torch.Tensor, mask: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, width = x.shape
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} relation heads")
    d = width // heads
    xh = x.float().view(b, t, heads, d).transpose(1, 2)  # (B, R, T, d)
    scores = xh @ xh.transpose(-1, -2) / math.sqrt(d)  # (B, R, T, T)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def attention_alignment_loss(student_qkv: dict[str, torch.Tensor], teacher_qkv: dict[str, torch.Tensor],
                             mask: torch.Tensor, relation_heads: int = 4) -> torch.Tensor:
    """Mean relation KL over the Q-Q, K-K and V-V relations captured from one layer of each model."""
    parts = [relation_loss(student_qkv[k], teacher_qkv[k], mask, relation_heads) for k in ("q", "k", "v")]
    return torch.stack(parts).mean()


class DistillLoss(nn.Module):
    """Weighted sum of the losses above, with the learned hidden-state projection as its parameter.

    Weights: ``kd`` (logits; decoders per token with next-token CE as the labelled term), ``hidden``
    (last hidden state MSE, or with ``layer_pairs`` the relative MSE of those mapped layers), ``attention``
    (relation alignment of the last layer), ``cosine`` (pooled embeddings; encoders). A weight of 0 skips
    that term.
    """

    def __init__(self, kind: str, student_width: int, teacher_width: int, *, kd: float = 1.0,
                 hidden: float = 0.0, attention: float = 0.0, cosine: float = 0.0, temperature: float = 2.0,
                 alpha: float = 0.5, relation_heads: int = 4,
                 layer_pairs: list[tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.kind, self.layer_pairs = kind, layer_pairs
        self.weights = {"kd": kd, "hidden": hidden, "attention": attention, "cosine": cosine}
        self.temperature, self.alpha, self.relation_heads = temperature, alpha, relation_heads
        needs_projection = student_width != teacher_width and (hidden > 0 or cosine > 0)
        self.projection = nn.Linear(student_width, teacher_width, bias=False) if needs_projection else None

    def forward(self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                mask: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``student``/``teacher``: dicts with ``hidden`` (B,T,H), optional ``logits`` and ``qkv``."""
        parts: dict[str, torch.Tensor] = {}
        if self.weights["kd"] and student.get("logits") is not None:
            parts["kd"] = self._kd(student["logits"], teacher["logits"], mask, labels)
        if self.weights["hidden"] and self.layer_pairs and student.get("layers") and teacher.get("layers"):
            parts["hidden"] = layer_mse_loss(student["layers"], teacher["layers"], self.layer_pairs,
                                             self.projection, mask)
        elif self.weights["hidden"]:
            parts["hidden"] = hidden_mse_loss(student["hidden"], teacher["hidden"], self.projection, mask)
        if self.weights["cosine"]:
            s_hidden = self.projection(student["hidden"]) if self.projection is not None else student["hidden"]
            parts["cosine"] = embedding_cosine_loss(s_hidden, teacher["hidden"], mask)
        if self.weights["attention"] and student.get("qkv") and teacher.get("qkv"):
            parts["attention"] = attention_alignment_loss(student["qkv"], teacher["qkv"], mask, self.relation_heads)
        if not parts:
            raise ValueError("no distillation term applies (all weights 0 or no logits)")
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def _kd(self, s_logits: torch.Tensor, t_logits: torch.Tensor, mask: torch.Tensor,
            labels: torch.Tensor | None) -> torch.Tensor:
        if s_logits.dim() == 3:  # decoder: token logits; the next token is the label
            ids = labels
            targets = None
            if ids is not None:
                targets = ids[:, 1:].masked_fill(~mask[:, 1:].bool(), -100)
            return kd_loss(s_logits[:, :-1], t_logits[:, :-1], self.temperature, self.alpha, targets,
                           mask[:, 1:])
        return kd_loss(s_logits, t_logits, self.temperature, self.alpha, labels)
