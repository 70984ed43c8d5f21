"""Calibration: run texts through the model, record each linear's input statistics, choose clip ranges.

Observers turn a layer's recorded statistics into the activation clip value ``c`` (scale = c / 127):

* ``minmax``: the largest |x| seen;
* ``percentile``: the ``percentile``-th percentile of |x| (outliers clipped);
* ``mse``: the clip among a grid of fractions of max |x| that minimises the INT8 round-trip MSE.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
from torch import nn

from autolite.errors import DataError, NumericsError
from autolite.eval.forward import run_model, tokenize

log = logging.getLogger(__name__)
OBSERVERS = ("minmax", "percentile", "mse")
SAMPLE_VALUES = 200_000  # |x| values kept per layer for percentile / MSE
SAMPLE_ROWS = 64  # input rows kept per layer for the per-layer error report


@dataclasses.dataclass
class ActivationStats:
    """What calibration saw at one linear's input."""

    absmax: float = 0.0
    channel_absmax: torch.Tensor | None = None  # (in_features,)
    values: list[torch.Tensor] = dataclasses.field(default_factory=list)  # samples of |x|
    rows: list[torch.Tensor] = dataclasses.field(default_factory=list)  # sample input rows

    def update(self, x: torch.Tensor, name: str) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        if not torch.isfinite(rows).all():
            raise NumericsError(f"calibration produced NaN/inf at the input of layer '{name}'; check the "
                                "model's weights or the calibration texts")
        channel = rows.abs().amax(dim=0)
        self.channel_absmax = channel if self.channel_absmax is None else torch.maximum(self.channel_absmax, channel)
        self.absmax = max(self.absmax, float(channel.max()))
        flat = rows.abs().flatten()
        keep = min(flat.numel(), SAMPLE_VALUES // 4)
        self.values.append(flat[torch.randint(0, flat.numel(), (keep,))])
        if sum(r.shape[0] for r in self.rows) < SAMPLE_ROWS:
            self.rows.append(rows[:SAMPLE_ROWS])

    def sample(self) -> torch.Tensor:
        values = torch.cat(self.values)
        if values.numel() > SAMPLE_VALUES:
            values = values[torch.randperm(values.numel())[:SAMPLE_VALUES]]
        return values

    def input_rows(self) -> torch.Tensor:
        return torch.cat(self.rows)[:SAMPLE_ROWS]


def collect(model: nn.Module, family: Any, tokenizer: Any, texts: list[str] | None, layers: dict[str, nn.Module],
            *, max_texts: int = 64, max_length: int = 128, batch_size: int = 8) -> dict[str, ActivationStats]:
    """Run up to ``max_texts`` calibration texts and record the input statistics of each layer."""
    if not texts:
        raise DataError("INT8 static quantization needs calibration texts and got none: pass calib=[...] "
                        "(or --data FILE on the CLI); the embedded corpus is used by default")
    if tokenizer is None:
        raise DataError("INT8 static quantization needs the tokenizer to run calibration texts")
    stats = {name: ActivationStats() for name in layers}
    hooks = [module.register_forward_pre_hook(_hook(stats[name], name)) for name, module in layers.items()]
    try:
        texts = texts[:max_texts]
        for start in range(0, len(texts), batch_size):
            run_model(model, family, tokenize(tokenizer, texts[start:start + batch_size], max_length))
    finally:
        for hook in hooks:
            hook.remove()
    empty = [name for name, s in stats.items() if s.channel_absmax is None]
    if empty:
        raise DataError(f"calibration never reached layer '{empty[0]}' ({len(empty)} layers unused)")
    return stats


def _hook(stats: ActivationStats, name: str):
    def record(module: nn.Module, args: tuple) -> None:
        stats.update(args[0], name)
    return record


def clip_value(stats: ActivationStats, observer: str, percentile: float = 99.99,
               smooth: torch.Tensor | None = None) -> float:
    """The activation clip chosen by ``observer`` (on activations divided by ``smooth`` when given)."""
    if smooth is not None:
        rows = stats.input_rows() / smooth
        values, absmax = rows.abs().flatten(), float((stats.channel_absmax / smooth).max())
    else:
        values, absmax = stats.sample(), stats.absmax
    if observer == "minmax" or absmax == 0.0:
        return max(absmax, 1e-8)
    if observer == "percentile":
        return max(float(torch.quantile(values, percentile / 100.0)), 1e-8)
    return _mse_clip(values, absmax)


def _mse_clip(values: torch.Tensor, absmax: float, steps: int = 40) -> float:
    best, best_err = absmax, float("inf")
    for fraction in torch.linspace(0.2, 1.0, steps).tolist():
        clip = absmax * fraction
        scale = clip / 127.0
        err = float(((torch.round(values / scale).clamp(max=127) * scale - values) ** 2).mean())
        if err < best_err:
            best, best_err = clip, err
    return best
