"""The token-dropping BERT encoder: after scheduled layers, only the top-k tokens by received attention go on.

``TokenDropEncoder`` replaces a BERT ``encoder`` module and holds the same ``layer`` list, so the state-dict keys
do not change. ``schedule[i]`` is the share of the input's ``T`` tokens that enter layer ``i`` (``schedule[0]``
is 1). Where the share falls before layer ``i``, layer ``i - 1`` runs with explicit attention probabilities; each
token's score is the attention it receives from the real tokens (summed over heads and queries); ``[CLS]``
(position 0) and the last real token (the final ``[SEP]``) are always kept, padding is ranked last. The kept
tokens are gathered into a ``(B, k, H)`` tensor, so later layers really compute on ``k`` tokens only, with static
shapes inside a batch (it composes with INT8 linears and ``torch.compile``).

Outputs (``output``): ``"restore"`` scatters the kept tokens back into a ``(B, T, H)`` tensor whose dropped
positions hold the state they had when dropped; ``"kept-mean"`` fills dropped positions with the row's mean over
kept real tokens, so that a mean pooling over the caller's mask equals the mean over the kept tokens. Scores
(``score``): ``"received"`` (attention from every real token, PoWER-BERT) or ``"cls"`` (attention from [CLS],
as EViT: what a classifier's pooled [CLS] reads).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from autolite.errors import BackendUnavailableError

OUTPUTS = ("restore", "kept-mean")
SCORES = ("received", "cls")
ALWAYS_KEPT = 2  # [CLS] and the final [SEP]


def keep_counts(schedule: tuple[float, ...], seq: int, min_length: int) -> list[int] | None:
    """Tokens entering each layer for an input of ``seq`` tokens; None when nothing is dropped."""
    if seq <= min_length:
        return None
    counts, current = [], seq
    for share in schedule:
        current = min(current, max(ALWAYS_KEPT, math.ceil(share * seq)))
        counts.append(current)
    return counts if counts[-1] < seq else None


def key_validity(mask: torch.Tensor | None, batch: int, seq: int, device: torch.device) -> torch.Tensor | None:
    """``(B, T)`` True for real tokens, from the mask BERT hands its encoder (None: no padding)."""
    if mask is None:
        return None
    row = mask[:, 0, 0, :] if mask.dim() == 4 else mask  # (B, T): the same for every query of a bidirectional mask
    valid = row if row.dtype == torch.bool else row == 0
    return valid.expand(batch, seq).to(device)


def additive_mask(valid: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """``(B, 1, 1, k)`` additive mask (0 keep, min drop) for eager and SDPA attention alike."""
    if valid is None:
        return None
    zeros = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return zeros.masked_fill(~valid, torch.finfo(dtype).min)[:, None, None, :]


def layer_with_scores(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None,
                      valid: torch.Tensor | None, score: str = "received") -> tuple[torch.Tensor, torch.Tensor]:
    """One BERT layer with explicit attention probabilities; returns its output ``(B, T, H)`` and each token's
    score ``(B, T)``: the attention it receives from the real tokens ("received") or from [CLS] ("cls")."""
    attn = layer.attention.self
    batch, seq, _ = hidden.shape
    dim = attn.attention_head_size
    q = attn.query(hidden).view(batch, seq, -1, dim).transpose(1, 2)  # (B, nh, T, d)
    k = attn.key(hidden).view(batch, seq, -1, dim).transpose(1, 2)
    v = attn.value(hidden).view(batch, seq, -1, dim).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * attn.scaling  # (B, nh, T, T)
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, seq, -1)  # (B, T, nh*d)
    out = layer.feed_forward_chunk(layer.attention.output(context, hidden))  # (B, T, H)
    if score == "cls":
        return out, probs[:, :, 0, :].sum(dim=1)  # (B, T)
    queries = probs if valid is None else probs * valid[:, None, :, None].to(probs.dtype)
    return out, queries.sum(dim=(1, 2))  # (B, T)


def select(received: torch.Tensor, valid: torch.Tensor | None, keep: int) -> torch.Tensor:
    """Indices ``(B, keep)`` (ascending) of the tokens to keep: [CLS] and the final real token first, then by
    received attention; padding last."""
    batch, seq = received.shape
    score = received.float().clone()
    last = (valid.sum(1) - 1) if valid is not None else torch.full((batch,), seq - 1, device=score.device)
    if valid is not None:
        score = score.masked_fill(~valid, -1.0)  # received attention is >= 0: padding ranks last
    score[:, 0] = math.inf
    score.scatter_(1, last.long().clamp(min=0)[:, None], math.inf)
    top = torch.topk(score, keep, dim=1, sorted=False).indices
    return torch.sort(top, dim=1).values


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b]]`` for ``(B, T, ...)`` x and ``(B, k)`` index."""
    if x.dim() == 2:
        return torch.gather(x, 1, index)
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[-1]))


class TokenDropEncoder(nn.Module):
    """A BERT encoder that drops low-attention tokens between layers (see the module docstring)."""

    def __init__(self, encoder: nn.Module, schedule: list[float], min_length: int, output: str,
                 score: str = "received") -> None:
        super().__init__()
        self.config = encoder.config
        self.layer = encoder.layer  # the same modules: state-dict keys unchanged
        self.gradient_checkpointing = False
        self.schedule = tuple(float(s) for s in schedule)
        self.min_length = int(min_length)
        self.output = output
        self.score = score

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: Any = None, encoder_attention_mask: Any = None, past_key_values: Any = None,
                use_cache: Any = None, **kwargs: Any) -> BaseModelOutputWithPastAndCrossAttentions:
        if torch.jit.is_tracing():  # the TorchScript exporter would freeze the keep counts to the traced length
            raise BackendUnavailableError("a token-drop model cannot be exported to ONNX / run in ONNX Runtime "
                                          "(keep counts depend on the sequence length); run it in torch")
        batch, seq, _ = hidden_states.shape  # (B, T, H)
        counts = keep_counts(self.schedule, seq, self.min_length)
        if counts is None:  # too short for the schedule: the dense path
            for layer in self.layer:
                hidden_states = layer(hidden_states, attention_mask, **kwargs)
            return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden_states)
        valid = key_validity(attention_mask, batch, seq, hidden_states.device)
        mask = attention_mask if valid is None else additive_mask(valid, hidden_states.dtype)
        index = torch.arange(seq, device=hidden_states.device).expand(batch, seq)  # (B, k): original positions
        full = hidden_states if self.output == "restore" else None
        for i, layer in enumerate(self.layer):
            target = counts[i + 1] if i + 1 < len(counts) else hidden_states.shape[1]
            if target >= hidden_states.shape[1]:
                hidden_states = layer(hidden_states, mask, **kwargs)
                continue
            hidden_states, received = layer_with_scores(layer, hidden_states, mask, valid, self.score)
            keep = select(received, valid, target)  # (B, k) into the current tokens
            if full is not None:  # dropped tokens keep the state they have now
                full = full.scatter(1, index[..., None].expand_as(hidden_states), hidden_states)
            index = torch.gather(index, 1, keep)
            hidden_states = gather_rows(hidden_states, keep)  # (B, k, H)
            valid = gather_rows(valid, keep) if valid is not None else None
            mask = additive_mask(valid, hidden_states.dtype)
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=self._finish(hidden_states, index, valid,
                                                                                         full, seq))

    def _finish(self, hidden: torch.Tensor, index: torch.Tensor, valid: torch.Tensor | None,
                full: torch.Tensor | None, seq: int) -> torch.Tensor:
        """The encoder output for ``self.output`` from the kept tokens ``(B, k, H)``."""
        if self.output == "kept-mean":
            weights = (valid if valid is not None else torch.ones(hidden.shape[:2], dtype=torch.bool,
                                                                   device=hidden.device))[..., None].to(hidden.dtype)
            mean = (hidden * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)
            full = mean.expand(hidden.shape[0], seq, hidden.shape[-1])
        return full.scatter(1, index[..., None].expand_as(hidden), hidden)  # (B, T, H)
