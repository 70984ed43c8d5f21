"""Recovery: a short distillation from the unpruned model (logits KL + hidden-state MSE, no labels).

A few hundred calibration sentences are too few: fitted on them for hundreds of steps, the pruned model
memorises them and drifts on other text. So each step's batch is drawn from seeded, augmented variants of
the texts (crops, concatenations, token replacement/deletion, random word sequences; see
:mod:`autolite.distill.augment`), which the teacher labels like any other input. Batch ``s`` is a pure
function of (seed, s), so recovery is deterministic.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from autolite.arch import ArchSpec
from autolite.distill.augment import Augmenter
from autolite.distill.train import batch_indices
from autolite.errors import DataError, NumericsError
from autolite.eval.forward import mean_pool, model_device, model_inputs
from autolite.prune.calib import CalibBatch, track

log = logging.getLogger(__name__)
EMBEDDING_WEIGHT = 10.0  # pooled-embedding cosine term for models without logits
ENCODER_AUGMENT = 0.7  # default share of augmented samples for encoders (decoders and seq2seq: real text only)
Batches = Callable[[int], dict]  # step -> the keyword arguments of one forward


def recovery_batches(tokenizer: Any, texts: list[str], family: ArchSpec, device: torch.device, *,
                     batch_size: int = 16, augment: float | None = None, seed: int = 0,
                     max_length: int = 128) -> Batches:
    """Batch ``step`` -> model inputs: ``batch_size`` texts (an epoch-wise seeded permutation), of which a share
    ``augment`` are augmented variants (None: 0.7 for encoders, 0 otherwise); padded to the longest."""
    if not texts:
        raise DataError("recovery needs calibration text; pass calib= (or leave it empty for the embedded corpus)")
    share = (ENCODER_AUGMENT if family.kind == "encoder" else 0.0) if augment is None else augment
    augmenter = Augmenter(tokenizer, list(texts), max_length, share, seed)

    def batch(step: int) -> dict:
        indices = batch_indices(len(texts), batch_size, step, seed)
        return model_inputs(family, augmenter.batch(indices, step), device)
    return batch


def fixed_batches(batches: list[CalibBatch]) -> Batches:
    """Cycle through ready-made calibration batches (step ``s`` -> batch ``s mod n``)."""
    return lambda step: batches[step % len(batches)].inputs


def recover(student: torch.nn.Module, teacher: torch.nn.Module, family: ArchSpec, batches: Batches,
            steps: int, lr: float = 1e-4, temperature: float = 2.0,
            on_eval: Callable[[int], None] | None = None, eval_every: int = 0) -> list[float]:
    """Fine-tune ``student`` for ``steps`` steps to match ``teacher`` on ``batches(step)``; returns the losses.

    Loss = KL(teacher || student) on logits at temperature T (times T^2) when the model has logits
    (else, for embedding models, ``10 * (1 - cos)`` of the mean-pooled embeddings),
    plus MSE between hidden states (every layer's when both have as many layers, else the last),
    relative to the teacher's mean square. Dropout stays off (eval mode); only the student's transformer
    layers are updated (embeddings and heads stay as they are: fewer optimizer states, faster steps).
    AdamW with a short warm-up and a cosine decay to 10%. ``on_eval(step)`` is called every ``eval_every``
    steps and after the last (e.g. to measure held-out fidelity along the way).
    """
    if steps <= 0:
        return []
    student.eval()
    teacher.eval()
    params = [p for view in family.layers(student) for p in view.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, foreach=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    losses = []
    for step in track(range(steps), "recovery (distilling from the unpruned model)"):
        inputs = batches(step)
        with torch.no_grad():
            target = teacher(**inputs, output_hidden_states=True)
        output = student(**inputs, output_hidden_states=True)
        loss = distill_loss(output, target, inputs["attention_mask"], family, temperature)
        if not torch.isfinite(loss):
            raise NumericsError(f"recovery loss became {float(loss)} at step {step}; lower recover_lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if on_eval is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            on_eval(step + 1)
    student.zero_grad(set_to_none=True)
    log.info("recovery: loss %.4f -> %.4f over %d steps", losses[0], losses[-1], steps)
    return losses


def recover_with(model: torch.nn.Module, teacher: torch.nn.Module, family: ArchSpec, config: Any, ctx: Any,
                 texts: list[str]) -> list[float]:
    """Recovery as a prune pass config asks for it (``recover_steps``, ``recover_lr``, ``recover_batch``,
    ``recover_augment``), on ``texts``."""
    batches = recovery_batches(ctx.tokenizer, texts, family, model_device(model), batch_size=config.recover_batch,
                               augment=config.recover_augment)
    losses = recover(model, teacher, family, batches, config.recover_steps, lr=config.recover_lr)
    if losses:
        ctx.note(f"{config.name}: recovery {config.recover_steps} steps (batch {config.recover_batch}, "
                 f"lr {config.recover_lr:g}), distillation loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    return losses


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to 10% of the peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


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
