"""Recovery: a short distillation from the unpruned model (logits KL + hidden-state MSE, no labels)."""
from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from autolite.arch import ArchSpec
from autolite.errors import NumericsError
from autolite.eval.forward import mean_pool
from autolite.prune.calib import CalibBatch, track

log = logging.getLogger(__name__)
EMBEDDING_WEIGHT = 10.0  # pooled-embedding cosine term for models without logits
TEACHER_CACHE_BYTES = 1 << 30  # keep the teacher's outputs up to this size (else recompute them each step)
_OUTPUT_FIELDS = ("logits", "last_hidden_state", "hidden_states", "encoder_hidden_states", "decoder_hidden_states")


def recover(student: torch.nn.Module, teacher: torch.nn.Module, family: ArchSpec, batches: list[CalibBatch],
            steps: int, lr: float = 1e-4, temperature: float = 2.0) -> list[float]:
    """Fine-tune ``student`` for ``steps`` steps to match ``teacher`` on ``batches``; returns the losses.

    Loss = KL(teacher || student) on logits at temperature T (times T^2) when the model has logits
    (else, for embedding models, ``10 * (1 - cos)`` of the mean-pooled embeddings),
    plus MSE between hidden states (every layer's when both have as many layers, else the last),
    relative to the teacher's mean square. Dropout stays off (eval mode); only the student's transformer
    layers are updated (embeddings and heads stay as they are: fewer optimizer states, faster steps).
    AdamW with a short warm-up and a cosine decay; batches in shuffled order; the teacher's outputs are
    computed once per batch and kept when they fit in ``TEACHER_CACHE_BYTES``.
    """
    if steps <= 0 or not batches:
        return []
    student.eval()
    teacher.eval()
    params = [p for view in family.layers(student) for p in view.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    targets = _TeacherOutputs(teacher)
    order = _order(len(batches), steps)
    losses = []
    for step in track(range(steps), "recovery (distilling from the unpruned model)"):
        index = order[step]
        batch = batches[index]
        target = targets.get(index, batch)
        output = student(**batch.inputs, output_hidden_states=True)
        loss = distill_loss(output, target, batch.inputs["attention_mask"], family, temperature)
        if not torch.isfinite(loss):
            raise NumericsError(f"recovery loss became {float(loss)} at step {step}; lower recover_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    student.zero_grad(set_to_none=True)
    log.info("recovery: loss %.4f -> %.4f over %d steps", losses[0], losses[-1], steps)
    return losses


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to 10% of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _order(count: int, steps: int) -> list[int]:
    """Batch indices for ``steps`` steps: every batch once per epoch, each epoch shuffled (seeded)."""
    generator = torch.Generator().manual_seed(0)
    order: list[int] = []
    while len(order) < steps:
        order += torch.randperm(count, generator=generator).tolist()
    return order[:steps]


class _TeacherOutputs:
    """The teacher's outputs per batch: computed once (no grad) and kept while they fit in the budget."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        self.teacher, self.cache, self.bytes = teacher, {}, 0

    def get(self, index: int, batch: CalibBatch):
        if index in self.cache:
            return self.cache[index]
        with torch.no_grad():
            out = self.teacher(**batch.inputs, output_hidden_states=True)
        kept = SimpleNamespace(**{k: getattr(out, k, None) for k in _OUTPUT_FIELDS})
        size = sum(t.numel() * t.element_size() for t in _tensors(kept))
        if self.bytes + size <= TEACHER_CACHE_BYTES:
            self.cache[index] = kept
            self.bytes += size
        return kept


def _tensors(outputs: SimpleNamespace) -> list[torch.Tensor]:
    found = []
    for value in vars(outputs).values():
        if torch.is_tensor(value):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            found += [v for v in value if torch.is_tensor(v)]
    return found


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
