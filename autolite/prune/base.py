"""What the structural prune passes share: validation, the score -> plan -> cut -> recover loop, notes."""
from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any, Callable

import torch

from autolite.arch import family_of
from autolite.data import load_texts
from autolite.errors import RecipeError, UnsupportedArchitectureError
from autolite.eval.forward import ensure_pad_token
from autolite.prune import reconstruct
from autolite.prune.calib import calib_batches
from autolite.prune.importance import get_importance
from autolite.prune.recover import recover_with
from autolite.prune.surgery import record_layout, why_not_plain

log = logging.getLogger(__name__)
SCOPES = ("per_layer", "global")
RECOVER_FROM = ("input", "original")
RECOVER_SAMPLES = 1024  # recovery draws from up to this many calibration texts (and variants of them)


@dataclasses.dataclass
class StructuredPrune:
    """Fields shared by PruneHeads and PruneFFN (mixed into their PassConfig dataclasses)."""

    ratio: float = 0.3
    importance: str = "taylor"
    scope: str = "per_layer"
    round_to: int = 1
    skip_layers: list = dataclasses.field(default_factory=list)
    calib_samples: int = 64
    iterations: int = 1
    recover_steps: int = 0
    recover_lr: float = 1e-4
    recover_batch: int = 16
    recover_augment: float | None = None
    recover_from: str = "input"  # distil from this pass's "input" or from the model compress() was given ("original")
    reconstruct: bool = True
    reconstruct_samples: int = 256

    def validate(self) -> None:
        if not isinstance(self.ratio, (int, float)) or not 0.0 <= float(self.ratio) < 1.0:
            raise RecipeError(f"{self.name}: ratio must be in [0, 1) (the fraction removed), got {self.ratio!r}")
        get_importance(self.importance)
        if self.scope not in SCOPES:
            raise RecipeError(f"{self.name}: scope must be one of {SCOPES}, got '{self.scope}'")
        if not isinstance(self.reconstruct, bool):
            raise RecipeError(f"{self.name}: reconstruct must be true or false, got {self.reconstruct!r}")
        for field in ("round_to", "calib_samples", "iterations", "reconstruct_samples"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                raise RecipeError(f"{self.name}: {field} must be an integer >= 1, got {getattr(self, field)!r}")
        if self.recover_from not in RECOVER_FROM:
            raise RecipeError(f"{self.name}: recover_from must be one of {RECOVER_FROM}, got {self.recover_from!r}")
        if not isinstance(self.recover_steps, int) or self.recover_steps < 0:
            raise RecipeError(f"{self.name}: recover_steps must be an integer >= 0, got {self.recover_steps!r}")
        _validate_recovery(self)
        if not isinstance(self.skip_layers, (list, tuple)):
            raise RecipeError(f"{self.name}: skip_layers must be a list of layer indices or 'stack.index' keys")

    def skips(self, key: str) -> bool:
        """Whether the group ``key`` ("encoder.3", "decoder.1.cross") is in ``skip_layers``."""
        stack, index = key.split(".")[:2]
        return any(str(s) in (index, f"{stack}.{index}") for s in self.skip_layers)


def _validate_recovery(config: StructuredPrune) -> None:
    if not isinstance(config.recover_lr, (int, float)) or not 0 < config.recover_lr < 1:
        raise RecipeError(f"{config.name}: recover_lr must be a number in (0, 1), e.g. 1e-4; got {config.recover_lr!r}")
    if not isinstance(config.recover_batch, int) or config.recover_batch < 1:
        raise RecipeError(f"{config.name}: recover_batch must be an integer >= 1, got {config.recover_batch!r}")
    augment = config.recover_augment
    if augment is not None and (not isinstance(augment, (int, float)) or not 0 <= augment <= 1):
        raise RecipeError(f"{config.name}: recover_augment is the share of augmented recovery samples, "
                          f"0..1 (or null: 0.7 for encoders, 0 otherwise); got {augment!r}")


def recover_texts(ctx: Any) -> list[str]:
    """The texts recovery draws from: ``ctx.calib`` (up to ``RECOVER_SAMPLES``), else the embedded corpus."""
    texts = list(ctx.calib or [])
    if not texts:
        texts = load_texts(None, split="calib").texts
    return texts[:RECOVER_SAMPLES]


def run_structured(model: torch.nn.Module, config: Any, ctx: Any, target: str, groups_fn: Callable,
                   plan_fn: Callable, cut_fn: Callable) -> torch.nn.Module:
    """Score, plan and cut ``iterations`` times (cumulative ratio), recovering after each cut if asked."""
    try:
        family = ctx.family or family_of(model)
    except UnsupportedArchitectureError as exc:
        raise UnsupportedArchitectureError(f"{config.name} needs a head/FFN map of the model's family: {exc}") from exc
    if ctx.tokenizer is not None:
        ensure_pad_token(ctx.tokenizer)
    batches = calib_batches(model, family, ctx, samples=config.calib_samples)
    teacher = _teacher(model, config, ctx)
    original = {g.key: _units(g, target) for g in groups_fn(family, model)}
    before = _count(model)
    for step in range(config.iterations):
        ratio = config.ratio * (step + 1) / config.iterations
        scores = get_importance(config.importance)(model, family, batches, target)
        groups = groups_fn(family, model)
        plan = plan_fn(groups, scores, ratio, original, config, family)
        _cut(model, family, ctx, config, target, [g for g in groups if g.key in plan], plan, cut_fn)
        _remember_scores(ctx, target, scores)
        if teacher is not None:
            recover_with(model, teacher, family, config, ctx, recover_texts(ctx))
    record_layout(family, model)
    _note(ctx, config, family, model, target, original, groups_fn, before)
    return model


def _cut(model, family, ctx, config, target: str, groups: list, plan: dict, cut_fn: Callable) -> None:
    """Cut every planned block; with ``reconstruct``, refit each output projection by least squares on
    activations collected just before (in several passes when the Gram matrices would not fit at once)."""
    if not config.reconstruct:
        for group in groups:
            cut_fn(group, plan[group.key])
        return
    batches = _samples(model, family, ctx, config.reconstruct_samples)
    for chunk in reconstruct.chunks(groups, target):
        stats = reconstruct.collect(model, family, batches, target, {g.key for g in chunk})
        for group in chunk:
            cut_fn(group, plan[group.key])
            reconstruct.refit(group, target, plan[group.key], stats[group.key])


def _samples(model: torch.nn.Module, family: Any, ctx: Any, samples: int) -> list:
    """Up to ``samples`` calibration texts in length-sorted batches (little padding), cached on the context."""
    if samples not in ctx.prune_batches:
        ctx.prune_batches[samples] = calib_batches(model, family, ctx, samples=samples, by_length=True)
    return ctx.prune_batches[samples]


def _teacher(model: torch.nn.Module, config: Any, ctx: Any) -> torch.nn.Module | None:
    """The model recovery distils from: ``ctx.teacher`` when a caller set one, else the model ``compress``
    was given (``recover_from: original``), else a copy of this pass's input."""
    if not config.recover_steps:
        return None
    if ctx.teacher is not None:
        return ctx.teacher
    if config.recover_from == "original" and ctx.original is not None:
        return ctx.original.eval()
    return copy.deepcopy(model).eval()


def _units(group: Any, target: str) -> int:
    return group.num_heads if target == "heads" else group.size


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _remember_scores(ctx: Any, target: str, scores: dict) -> None:
    """Keep the last scores on the context (the CLI plots them)."""
    ctx.prune_scores[target] = {k: [float(x) for x in v] for k, v in scores.items()}


def _note(ctx, config, family, model, target, original, groups_fn, before) -> None:
    now = {g.key: _units(g, target) for g in groups_fn(family, model)}
    what = "heads" if target == "heads" else "FFN neurons"
    total, kept = sum(original.values()), sum(now.values())
    sizes = sorted(set(now.values()))
    message = (f"{config.name}: removed {total - kept} of {total} {what} ({config.importance}, {config.scope}; "
               f"per layer now {sizes[0] if len(sizes) == 1 else f'{sizes[0]}-{sizes[-1]}'}); "
               f"parameters {before:,} -> {_count(model):,}")
    reason = why_not_plain(family, model)
    if reason is None:
        message += "; HF config updated: the saved model loads with plain transformers"
    else:
        message += (f"; {reason}: the saved directory carries a small modeling file, so it loads with transformers' "
                    "Auto classes and trust_remote_code=True (or autolite.load)")
    ctx.note(message)
