"""What the dynamic passes share: calibration texts split into a fit part and a held-out part, the
final classifier's logits on them, and the accuracy budget arithmetic."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch

from autolite.errors import RecipeError
from autolite.eval.forward import tokenize


@dataclasses.dataclass
class Split:
    """Calibration texts (and labels, when given) for fitting, and a held-out part for thresholds."""

    fit_texts: list[str]
    held_texts: list[str]
    fit_labels: list[int] | None
    held_labels: list[int] | None


def split_calib(ctx: Any, what: str, holdout: float) -> Split:
    """Split ``ctx.calib`` (and ``ctx.labels``) into fit / held-out parts; one-line error when missing."""
    texts = list(ctx.calib or [])
    if ctx.tokenizer is None or len(texts) < 8:
        raise RecipeError(f"{what} needs a tokenizer and at least 8 calibration texts (pass --calib/--data)")
    labels = list(ctx.labels) if getattr(ctx, "labels", None) is not None else None
    if labels is not None and len(labels) != len(texts):
        raise RecipeError(f"{what}: {len(labels)} labels for {len(texts)} calibration texts")
    cut = max(1, min(len(texts) - 1, round(len(texts) * (1.0 - holdout))))
    return Split(texts[:cut], texts[cut:], labels[:cut] if labels else None, labels[cut:] if labels else None)


def text_batches(tokenizer: Any, texts: list[str], batch: int = 32,
                 max_length: int = 128) -> Iterator[dict[str, torch.Tensor]]:
    """Tokenized batches of ``texts`` (padded per batch)."""
    for start in range(0, len(texts), batch):
        yield tokenize(tokenizer, texts[start:start + batch], max_length)


@torch.no_grad()
def classifier_logits(model: torch.nn.Module, tokenizer: Any, texts: list[str], batch: int = 32,
                      max_length: int = 128) -> torch.Tensor:
    """The model's classification logits ``(N, C)`` in FP32."""
    parts = [model(**inputs).logits.float() for inputs in text_batches(tokenizer, texts, batch, max_length)]
    return torch.cat(parts)


def targets(logits: torch.Tensor, labels: list[int] | None) -> torch.Tensor:
    """What accuracy is measured against: the labels, else the full model's own predictions (agreement)."""
    return torch.tensor(labels) if labels is not None else logits.argmax(-1)


def check_threshold(what: str, name: str, value: float | None) -> None:
    """Thresholds are confidences in (0, 1]; None means "calibrate"."""
    if value is None:
        return
    if not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise RecipeError(f"{what}: {name} must be in (0, 1], got {value!r}")


def check_budget(what: str, max_drop: float, holdout: float) -> None:
    """``max_drop`` in accuracy points >= 0; ``holdout`` a fraction in (0, 1)."""
    if not isinstance(max_drop, (int, float)) or not 0.0 <= float(max_drop) <= 100.0:
        raise RecipeError(f"{what}: max_drop is in accuracy points in [0, 100], got {max_drop!r}")
    if not isinstance(holdout, (int, float)) or not 0.0 < float(holdout) < 1.0:
        raise RecipeError(f"{what}: holdout must be a fraction in (0, 1), got {holdout!r}")


def has_classifier(model: torch.nn.Module) -> bool:
    """A sequence classifier: a ``...ForSequenceClassification`` with ``num_labels`` >= 2."""
    return "ForSequenceClassification" in type(model).__name__ and getattr(model.config, "num_labels", 0) >= 2


def token_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """The ``(B, T)`` real-token mask from an encoder's 4D bool or additive attention mask (None: no padding)."""
    if mask is None or mask.dim() != 4:
        return None
    row = mask[:, 0, 0, :] if mask.dtype == torch.bool else mask[:, 0, 0, :] == 0  # keys [CLS] may attend to
    return row.expand(batch, -1) if row.shape[0] == 1 else row
