"""Validate an export against its source: run both on the embedded corpus and measure the difference.

Every exporter turns its exported artifact into a function ``batch -> {output name: tensor}`` and
calls :func:`validate`; the reference is the in-memory torch model. Differences are measured on real
tokens only (padding is masked out): max abs, relative L2 (``||a - b|| / ||b||``) and mean row cosine.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable

import torch

from autolite.data import load_texts
from autolite.errors import NumericsError
from autolite.eval.forward import batches, torch_outputs  # noqa: F401 - re-exported: every exporter compares on it

log = logging.getLogger(__name__)

Outputs = dict[str, torch.Tensor]
Runner = Callable[[dict[str, torch.Tensor]], Outputs]
LOSSLESS_REL_L2 = 1e-4  # SPEC results 4: lossless paths match within relative L2 < 1e-4


@dataclasses.dataclass
class Tolerance:
    """Pass criteria: relative L2 at most ``max_rel_l2`` and/or mean cosine at least ``min_cosine``."""

    max_rel_l2: float | None = None
    min_cosine: float | None = None

    def describe(self) -> str:
        parts = []
        if self.max_rel_l2 is not None:
            parts.append(f"rel L2 < {self.max_rel_l2:g}")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return " and ".join(parts) or "none"


LOSSLESS = Tolerance(max_rel_l2=LOSSLESS_REL_L2)


@dataclasses.dataclass
class Validation:
    """The measured difference between an export and its source, and whether it met its tolerance."""

    against: str
    texts: int
    max_abs: float
    rel_l2: float
    cosine: float
    tolerance: str
    passed: bool
    extra: dict[str, float] = dataclasses.field(default_factory=dict)

    def line(self) -> str:
        """One line for logs and the CLI."""
        extra = "".join(f", {k} {v:.6g}" for k, v in self.extra.items())
        verdict = "ok" if self.passed else "FAILED"
        return (f"{verdict}: max abs {self.max_abs:.3g}, rel L2 {self.rel_l2:.3g}, cosine {self.cosine:.7f}{extra} "
                f"vs {self.against} on {self.texts} texts (required: {self.tolerance})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def corpus_texts(max_texts: int | None = None) -> list[str]:
    """The held-out split of the embedded corpus (92 sentences), optionally cut to ``max_texts``."""
    return load_texts(None, split="heldout").head(max_texts).texts


def real_rows(tensor: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` -> ``(N, D)`` rows of real tokens; ``(B, C)`` passes through."""
    tensor = tensor.detach().float().cpu()
    if tensor.dim() == 3 and tensor.shape[:2] == mask.shape:
        return tensor[mask.bool()]
    return tensor


@torch.no_grad()
def collect(run: Runner, tokenizer: Any, texts: list[str], batch_size: int = 16,
            max_length: int = 128) -> Outputs:
    """Run ``run`` over the texts in batches; concatenate each output's real-token rows."""
    rows: dict[str, list[torch.Tensor]] = {}
    for batch in batches(tokenizer, texts, batch_size, max_length):
        for name, value in run(batch).items():
            rows.setdefault(name, []).append(real_rows(torch.as_tensor(value), batch["attention_mask"]))
    return {name: torch.cat(parts) for name, parts in rows.items()}


def difference(got: Outputs, ref: Outputs) -> tuple[float, float, float]:
    """(max abs, worst relative L2, mean row cosine of the first output) between matching outputs."""
    missing = [name for name in ref if name not in got]
    if missing:
        raise NumericsError(f"the export lacks output(s) {missing}; it cannot be validated")
    max_abs, rel_l2 = 0.0, 0.0
    for name, expected in ref.items():
        actual = got[name].float()
        if actual.shape != expected.shape:
            raise NumericsError(f"export output '{name}' has shape {tuple(actual.shape)}, "
                                f"the source {tuple(expected.shape)}")
        diff = actual - expected
        max_abs = max(max_abs, float(diff.abs().max()) if diff.numel() else 0.0)
        rel_l2 = max(rel_l2, float(diff.norm() / expected.norm().clamp(min=1e-12)))
    first = next(iter(ref))
    cosine = float(torch.nn.functional.cosine_similarity(got[first].float(), ref[first], dim=-1).mean())
    return max_abs, rel_l2, cosine


def judge(got: Outputs, ref: Outputs, tolerance: Tolerance, *, against: str, texts: int,
          extra: dict[str, float] | None = None) -> Validation:
    """Measure and compare against ``tolerance`` (NaN/inf never passes)."""
    max_abs, rel_l2, cosine = difference(got, ref)
    passed = all(math.isfinite(v) for v in (max_abs, rel_l2, cosine))
    if tolerance.max_rel_l2 is not None:
        passed = passed and rel_l2 < tolerance.max_rel_l2
    if tolerance.min_cosine is not None:
        passed = passed and cosine >= tolerance.min_cosine
    return Validation(against=against, texts=texts, max_abs=max_abs, rel_l2=rel_l2, cosine=cosine,
                      tolerance=tolerance.describe(), passed=passed, extra=dict(extra or {}))


def validate(run: Runner, reference: Runner, tokenizer: Any, tolerance: Tolerance, *, what: str,
             against: str = "the source torch model", max_texts: int | None = None,
             batch_size: int = 16) -> Validation:
    """Run export and reference on the corpus, measure, and raise :class:`NumericsError` on failure."""
    texts = corpus_texts(max_texts)
    ref = collect(reference, tokenizer, texts, batch_size)
    got = collect(run, tokenizer, texts, batch_size)
    extra = _agreement(got, ref)
    result = judge(got, ref, tolerance, against=against, texts=len(texts), extra=extra)
    log.info("%s validation: %s", what, result.line())
    if not result.passed:
        raise NumericsError(f"{what} export failed validation ({result.line()}); nothing was written")
    return result


def _agreement(got: Outputs, ref: Outputs) -> dict[str, float]:
    """Top-1 agreement of logits (next token for LMs, class for classifiers)."""
    if "logits" not in ref or "logits" not in got:
        return {}
    same = got["logits"].argmax(-1) == ref["logits"].argmax(-1)
    return {"top1_agreement": float(same.float().mean())}


def validate_quantized(run: Runner, intended: Runner, source: Runner, tokenizer: Any, *, what: str,
                       max_texts: int | None = None, max_rel_l2: float = 1e-3, slack: float = 0.001) -> Validation:
    """Validate a quantized export twice: against ``intended`` (a torch model holding the same quantized
    weights: rel L2 < ``max_rel_l2``) and against the float ``source`` (cosine >= intended's - ``slack``).

    The reported cosine and top-1 agreement are against the source; ``rel_l2``/``max_abs`` against intended.
    """
    texts = corpus_texts(max_texts)
    got = collect(run, tokenizer, texts)
    want = collect(intended, tokenizer, texts)
    src = collect(source, tokenizer, texts)
    cos_export, cos_intended = difference(got, src)[2], difference(want, src)[2]
    extra = {**_agreement(got, src), "intended_cosine": cos_intended}
    result = judge(got, want, Tolerance(max_rel_l2=max_rel_l2), against="the FP32 torch model (rel L2: vs the same "
                   "weights quantized in torch)", texts=len(texts), extra=extra)
    result.cosine = cos_export
    result.passed = result.passed and cos_export >= cos_intended - slack
    result.tolerance = f"rel L2 < {max_rel_l2:g} vs the torch twin and cosine >= {cos_intended:.6f} - {slack:g}"
    log.info("%s validation: %s", what, result.line())
    if not result.passed:
        raise NumericsError(f"{what} export failed validation ({result.line()}); nothing was written")
    return result
