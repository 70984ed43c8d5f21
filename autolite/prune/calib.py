"""Calibration batches, a loss with a nonzero gradient at the unpruned model, and progress bars.

The loss is the task loss when labels exist (or the model's own predictions as pseudo-labels for a
classification head), the language-model loss for decoders and seq2seq models, and a SimCSE-style
contrastive loss (two dropout-noised views of each text are positives, the rest of the batch negatives)
for embedding models without a head. A distillation loss against the model itself would be zero.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from autolite.arch import ArchSpec
from autolite.data import load_texts
from autolite.errors import DataError
from autolite.eval.forward import mean_pool, model_device, model_inputs, tokenize


@dataclasses.dataclass
class CalibBatch:
    inputs: dict[str, torch.Tensor]  # tokenized, on the model's device, seq2seq decoder inputs included
    labels: torch.Tensor | None


def calib_batches(model: torch.nn.Module, family: ArchSpec, ctx: Any, *, samples: int = 64,
                  batch_size: int = 8, max_length: int = 128, by_length: bool = False) -> list[CalibBatch]:
    """Tokenized calibration batches from ``ctx.calib`` (the embedded corpus when it is empty).

    Each batch is padded to its longest text; ``by_length`` groups texts of similar length (less padding)."""
    texts, labels = list(ctx.calib or []), ctx.labels
    if not texts:
        data = load_texts(None, split="calib")
        texts, labels = data.texts, data.labels
    if ctx.tokenizer is None:
        raise DataError("pruning needs a tokenizer for its calibration text; pass tokenizer= to compress()")
    texts = texts[:samples]
    labels = labels[:samples] if labels is not None and len(labels) >= len(texts) else None
    if by_length:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        texts = [texts[i] for i in order]
        labels = [labels[i] for i in order] if labels is not None else None
    device = model_device(model)
    out = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenize(ctx.tokenizer, texts[start:start + batch_size], max_length)
        batch_labels = torch.tensor(labels[start:start + batch_size]) if labels is not None else None
        out.append(CalibBatch(model_inputs(family, encoded, device), batch_labels))
    return out


def has_head(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries an LM head or a task head (classifier/score)."""
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out) and get_out() is not None:
        return True
    return any(isinstance(getattr(model, name, None), torch.nn.Module) for name in ("classifier", "score"))


def calib_loss(model: torch.nn.Module, family: ArchSpec, batch: CalibBatch) -> torch.Tensor:
    """A loss whose gradient at the unpruned model is not zero (see the module docstring)."""
    inputs = batch.inputs
    if not has_head(model):
        return contrastive_loss(model, family, inputs)
    if family.kind == "encoder":
        logits = model(**inputs).logits
        labels = batch.labels
        num_labels = logits.shape[-1]
        if labels is None or int(labels.max()) >= num_labels or int(labels.min()) < 0:
            labels = logits.detach().argmax(-1)  # pseudo-labels: the model's own predictions
        return F.cross_entropy(logits.float(), labels.to(logits.device))
    targets = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    if family.kind == "seq2seq":  # reconstruct the input: teacher forcing on the shifted ids
        return model(**inputs, labels=targets).loss
    return model(**inputs, labels=targets).loss


def contrastive_loss(model: torch.nn.Module, family: ArchSpec, inputs: dict[str, torch.Tensor],
                     temperature: float = 0.05) -> torch.Tensor:
    """SimCSE: two dropout-noised encodings of each text are positives; other texts are negatives."""
    was_training = model.training
    model.train()
    try:
        first, second = (_pooled(model, family, inputs) for _ in range(2))
    finally:
        model.train(was_training)
    sims = F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T / temperature
    return F.cross_entropy(sims, torch.arange(len(sims), device=sims.device))


def _pooled(model: torch.nn.Module, family: ArchSpec, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    if family.kind == "seq2seq":
        hidden = model.get_encoder()(input_ids=inputs["input_ids"],
                                     attention_mask=inputs["attention_mask"]).last_hidden_state
    else:
        hidden = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    return mean_pool(hidden.float(), inputs["attention_mask"])


def track(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """Iterate with a transient rich progress bar on stderr."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)
