"""Recovery: a short distillation from the unpruned model (logits KL + hidden-state MSE, no labels)."""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from autolite.arch import ArchSpec
from autolite.errors import NumericsError
from autolite.eval.forward import mean_pool
from autolite.prune.calib import CalibBatch, track

log = logging.getLogger(__name__)
EMBEDDING_WEIGHT = 10.0  # pooled-embedding cosine term for models without logits


def recover(student: torch.nn.Module, teacher: torch.nn.Module, family: ArchSpec, batches: list[CalibBatch],
            steps: int, lr: float = 1e-4, temperature: float = 2.0) -> list[float]:
    """Fine-tune ``student`` for ``steps`` steps to match ``teacher`` on ``batches``; returns the losses.

    Loss = KL(teacher || student) on logits at temperature T (times T^2) when the model has logits
    (else, for embedding models, ``10 * (1 - cos)`` of the mean-pooled embeddings),
    plus MSE between final hidden states (and every layer's, when both have as many layers),
    relative to the teacher's mean square. Dropout stays off (eval mode); only the student's transformer
    layers are updated (embeddings and heads stay as they are: fewer optimizer states, faster steps).
    """
    if steps <= 0 or not batches:
        return []
    student.eval()
    teacher.eval()
    params = [p for view in family.layers(student) for p in view.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    losses = []
    for step in track(range(steps), "recovery (distilling from the unpruned model)"):
        batch = batches[step % len(batches)]
        with torch.no_grad():
            target = teacher(**batch.inputs, output_hidden_states=True)
        output = student(**batch.inputs, output_hidden_states=True)
        loss = distill_loss(output, target, batch.inputs["attention_mask"], family, temperature)
        if not torch.isfinite(loss):
            raise NumericsError(f"recovery loss became {float(loss)} at step {step}; lower recover_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    student.zero_grad(set_to_none=True)
    log.info("recovery: loss %.4f -> %.4f over %d steps", losses[0], losses[-1], steps)
    return losses


def distill_loss(output, target, mask: torch.Tensor, family: ArchSpec, temperature: float) -> torch.Tensor:
    loss = torch.zeros(())
    s_logits, t_logits = getattr(output, "logits", None), getattr(target, "logits", None)
    if s_logits is not None and t_logits is not None:
        s = F.log_softmax(s_logits.float() / temperature, -1)
        t = F.log_softmax(t_logits.float() / temperature, -1)
        kl = (t.exp() * (t - s)).sum(-1)
        if kl.dim() == 2 and family.kind == "decoder":  # per token: ignore padding
            kl = kl[mask.bool()]
        loss = loss + kl.mean() * temperature ** 2
    if s_logits is None and family.kind == "encoder":  # embedding model: match the pooled embedding's direction
        pooled = [mean_pool(o.last_hidden_state.float(), mask) for o in (output, target)]
        loss = loss + (1 - F.cosine_similarity(pooled[0], pooled[1], dim=-1)).mean() * EMBEDDING_WEIGHT
    pairs = _hidden_pairs(output, target, mask, family)
    for s_hidden, t_hidden, hidden_mask in pairs:
        weight = hidden_mask.unsqueeze(-1).float()
        err = ((s_hidden.float() - t_hidden.float()) ** 2 * weight).sum()
        scale = (t_hidden.float() ** 2 * weight).sum()
        loss = loss + err / scale.clamp(min=1e-6) / len(pairs)
    return loss


def _hidden_pairs(output, target, mask, family):
    """(student, teacher, token mask) hidden-state pairs: every layer when the depths match, else the last."""
    pairs = []
    stacks = [("encoder_hidden_states", mask), ("decoder_hidden_states", None)] if family.kind == "seq2seq" \
        else [("hidden_states", mask)]
    for name, stack_mask in stacks:
        s_states, t_states = getattr(output, name, None), getattr(target, name, None)
        if not s_states or not t_states:
            continue
        if len(s_states) != len(t_states):
            s_states, t_states = s_states[-1:], t_states[-1:]
        for s, t in zip(s_states[1:] or s_states, t_states[1:] or t_states):
            pairs.append((s, t, stack_mask if stack_mask is not None else torch.ones(s.shape[:2])))
    return pairs
