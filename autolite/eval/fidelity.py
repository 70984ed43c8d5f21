"""``autolite.evaluate``: compare a model with a reference on texts (embedded corpus by default)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

from autolite.arch import ArchSpec, family_of
from autolite.data import TextData, load_texts
from autolite.errors import ArgumentError, DataError
from autolite.eval import metrics
from autolite.eval.forward import Outputs, batches, run_model


@dataclasses.dataclass
class _Totals:
    """Running sums over batches, turned into metrics at the end."""

    cosine_sum: float = 0.0
    rows: int = 0
    agree: int = 0
    agree_total: int = 0
    nll: float = 0.0
    nll_ref: float = 0.0
    tokens: int = 0
    correct: int = 0
    correct_ref: int = 0
    labeled: int = 0


def evaluate(model: torch.nn.Module, tokenizer: Any, reference: torch.nn.Module | None = None,
             data: TextData | str | list[str] | None = None, *, family: ArchSpec | None = None,
             batch_size: int = 16, max_length: int = 128, max_texts: int | None = None) -> dict[str, Any]:
    """Fidelity of ``model`` against ``reference`` (both HF models of the same family).

    Encoders: mean cosine of mean-pooled embeddings, top-1 agreement of logits (with a head) and
    accuracy on labeled data. Decoders and seq2seq: perplexity of both, its relative change and
    next-token agreement. Without a reference only the model's own metrics are given.
    """
    _check_arguments(model, tokenizer, reference)
    family = family or family_of(model)
    if reference is not None and family_of(reference).kind != family.kind:
        raise ArgumentError(f"the reference is of kind '{family_of(reference).kind}' but the model of kind "
                            f"'{family.kind}': compare a model with the model it was made from")
    data = _as_text_data(data).head(max_texts)
    labels = torch.tensor(data.labels) if data.labels is not None else None
    totals = _Totals()
    offset = 0
    for batch in batches(tokenizer, data.texts, batch_size, max_length):
        out = run_model(model, family, batch)
        ref = run_model(reference, family, batch) if reference is not None else None
        _check(out, ref)
        batch_labels = labels[offset:offset + len(batch["input_ids"])] if labels is not None else None
        _accumulate(totals, family, out, ref, batch_labels)
        offset += len(batch["input_ids"])
    return _summarise(totals, family, data, reference is not None)


def _as_text_data(data: TextData | str | list[str] | None) -> TextData:
    if isinstance(data, TextData):
        return data
    if isinstance(data, list):
        if not data:
            raise DataError("evaluation data is empty; pass at least one text")
        return TextData(list(data), None, "list")
    return load_texts(data, split="heldout" if data is None else "all")


def _check_arguments(model: Any, tokenizer: Any, reference: Any) -> None:
    for name, value in (("model", model), ("reference", reference)):
        if value is not None and not isinstance(value, torch.nn.Module) or (name == "model" and value is None):
            raise ArgumentError(f"evaluate() needs an HF model as {name}, got {type(value).__name__}")
    if not callable(tokenizer):
        raise ArgumentError(f"evaluate() needs the model's tokenizer, got {type(tokenizer).__name__}")


def _check(out: Outputs, ref: Outputs | None) -> None:
    metrics.check_finite(out.logits, "model logits")
    metrics.check_finite(out.embeddings, "model embeddings")
    if ref is not None:
        metrics.check_finite(ref.logits, "reference logits")
        for what, mine, theirs in (("embeddings", out.embeddings, ref.embeddings), ("logits", out.logits, ref.logits)):
            if mine is not None and theirs is not None and mine.shape != theirs.shape:
                raise ArgumentError(f"the reference's {what} {tuple(theirs.shape)} do not match the model's "
                                    f"{tuple(mine.shape)}: compare a model with the model it was made from")


def _accumulate(totals: _Totals, family: ArchSpec, out: Outputs, ref: Outputs | None,
                labels: torch.Tensor | None) -> None:
    generative = family.kind != "encoder"
    if ref is not None and out.embeddings is not None:
        totals.cosine_sum += float(metrics.cosine_per_row(out.embeddings, ref.embeddings).sum())
        totals.rows += out.embeddings.shape[0]
    if ref is not None and out.logits is not None:
        mask = out.mask if generative else None
        hit, total = metrics.top1_matches(out.logits, ref.logits, mask)
        totals.agree += hit
        totals.agree_total += total
    if generative:
        shift = family.kind == "decoder"
        nll, count = metrics.next_token_nll(out.logits, out.input_ids, out.mask, shift)
        totals.nll += nll
        totals.tokens += count
        if ref is not None:
            totals.nll_ref += metrics.next_token_nll(ref.logits, ref.input_ids, ref.mask, shift)[0]
    if labels is not None and out.logits is not None and out.logits.dim() == 2:
        totals.correct += metrics.accuracy_matches(out.logits, labels)[0]
        totals.labeled += len(labels)
        if ref is not None:
            totals.correct_ref += metrics.accuracy_matches(ref.logits, labels)[0]


def _summarise(totals: _Totals, family: ArchSpec, data: TextData, has_ref: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"texts": len(data), "data": data.source, "kind": family.kind}
    if totals.rows:
        result["cosine"] = totals.cosine_sum / totals.rows
    if totals.agree_total:
        key = "top1_agreement" if family.kind == "encoder" else "next_token_agreement"
        result[key] = totals.agree / totals.agree_total
    if totals.tokens:
        result["perplexity"] = metrics.perplexity(totals.nll, totals.tokens)
        if has_ref:
            ppl_ref = metrics.perplexity(totals.nll_ref, totals.tokens)
            result["perplexity_ref"] = ppl_ref
            result["perplexity_rel_change"] = result["perplexity"] / ppl_ref - 1.0
    if totals.labeled:
        result["accuracy"] = totals.correct / totals.labeled
        if has_ref:
            result["accuracy_ref"] = totals.correct_ref / totals.labeled
    elif data.labels is not None:
        result["accuracy"] = None
        result["accuracy_note"] = "labels given but the model has no classification head"
    return result
