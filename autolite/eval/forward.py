"""One forward pass per family kind, returning what fidelity and benchmarks compare."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch

from autolite.arch import ArchSpec


@dataclasses.dataclass
class Outputs:
    """Pooled embeddings ``(B, H)`` and/or logits ``(B, C)`` or ``(B, T, V)``, plus the token mask ``(B, T)``."""

    embeddings: torch.Tensor | None
    logits: torch.Tensor | None
    mask: torch.Tensor
    input_ids: torch.Tensor


def ensure_pad_token(tokenizer: Any) -> Any:
    """Decoder tokenizers often lack a pad token: use EOS (masked out everywhere it matters)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(tokenizer: Any, texts: list[str], max_length: int = 128) -> dict[str, torch.Tensor]:
    ensure_pad_token(tokenizer)
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def batches(tokenizer: Any, texts: list[str], batch_size: int, max_length: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(texts), batch_size):
        yield tokenize(tokenizer, texts[start:start + batch_size], max_length)


def model_inputs(family: ArchSpec, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The keyword arguments of one forward: seq2seq models get teacher-forced decoder inputs."""
    inputs = {k: v.to(device) for k, v in batch.items()}
    if family.kind == "seq2seq":
        ids = inputs["input_ids"]
        decoder_ids = torch.zeros_like(ids)  # shift right; T5 starts decoding at pad id 0
        decoder_ids[:, 1:] = ids[:, :-1]
        inputs["decoder_input_ids"] = decoder_ids
    return inputs


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average the hidden states ``(B, T, H)`` over real tokens -> ``(B, H)``."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def last_full_state(out: Any, rows: int) -> torch.Tensor | None:
    """The last hidden state holding every row of the batch, or None: an early-exit encoder (rows leave the
    batch, possibly before any layer) records fewer rows or no state at all."""
    states = getattr(out, "hidden_states", None) or ()
    return states[-1] if states and states[-1].shape[0] == rows else None


@torch.no_grad()
def run_model(model: torch.nn.Module, family: ArchSpec, batch: dict[str, torch.Tensor]) -> Outputs:
    """Run ``model`` on a tokenized batch and collect pooled embeddings and logits in FP32."""
    device = model_device(model)
    inputs = model_inputs(family, batch, device)
    if family.kind == "encoder":
        out = model(**inputs, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = last_full_state(out, inputs["attention_mask"].shape[0])
        logits = getattr(out, "logits", None)
    elif family.kind == "seq2seq":
        out = model(**inputs)
        hidden, logits = out.encoder_last_hidden_state, out.logits
    else:
        out = model(**inputs)
        hidden, logits = None, out.logits
    mask = inputs["attention_mask"]
    embeddings = mean_pool(hidden.float(), mask) if hidden is not None else None
    return Outputs(embeddings=embeddings, logits=None if logits is None else logits.float(),
                   mask=mask, input_ids=inputs["input_ids"])


def model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def torch_outputs(model: torch.nn.Module, family: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The outputs an export is compared on, in order of importance (the first drives the cosine).

    encoder: ``last_hidden_state`` (+ ``logits`` with a head); decoder: ``logits``;
    seq2seq: ``logits`` (teacher-forced) and ``encoder_last_hidden_state``.
    """
    inputs = model_inputs(family, batch, model_device(model))
    if family.kind == "decoder":
        inputs["use_cache"] = False
    out = model(**inputs, output_hidden_states=family.kind == "encoder")
    result: dict[str, torch.Tensor] = {}
    if family.kind == "encoder":
        hidden = getattr(out, "last_hidden_state", None)
        result["last_hidden_state"] = hidden if hidden is not None else out.hidden_states[-1]
        if getattr(out, "logits", None) is not None:
            result["logits"] = out.logits
    elif family.kind == "seq2seq":
        result["logits"] = out.logits
        result["encoder_last_hidden_state"] = out.encoder_last_hidden_state
    else:
        result["logits"] = out.logits
    return result
