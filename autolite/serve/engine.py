"""What the server runs: tokenization with limits, and one batched forward per task.

Tasks: ``embed`` (mean-pooled last hidden state, L2-normalised by default, via
:func:`autolite.eval.forward.run_model`), ``classify`` (encoders with a classification head) and
``generate`` (decoders and seq2seq: ``model.generate`` with its KV cache, greedy at temperature 0).
Generation batches *static* groups: concurrent prompts (streamed or not) with the same sampling
parameters and a similar length run as one left-padded ``generate`` call; a new request joins the next
batch, not a running one (no continuous batching).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np
import torch

from autolite.arch import ArchSpec
from autolite.errors import AutoliteError, NumericsError
from autolite.eval.forward import ensure_pad_token, model_device, run_model
from autolite.passes import applied_recipe
from autolite.runtime.external import runner_of
from autolite.serve.stream import StreamPayload, BatchStreamer, CancelledRows

log = logging.getLogger(__name__)
DEFAULT_MAX_TOKENS = 512
#: Temperatures below this decode greedily: logits / 1e-40 overflow float32 and sampling would fail.
MIN_TEMPERATURE = 1e-3


class InputTooLongError(AutoliteError):
    """A text has more tokens than the server's limit (HTTP 413)."""


class UnsupportedTaskError(AutoliteError):
    """The served model cannot do this task (e.g. classify without a classification head)."""


@dataclass(frozen=True)
class GenerateParams:
    """Sampling parameters shared by a generation batch (part of its batcher key)."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


class Engine:
    """A loaded model, its tokenizer and limits; ``run(key, ids)`` is the batcher's forward."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, family: ArchSpec, *, name: str = "model",
                 max_tokens: int | None = None, truncate: bool = False, normalize: bool = True) -> None:
        self.model, self.tokenizer, self.family, self.name = model.eval(), ensure_pad_token(tokenizer), family, name
        self.max_tokens = min(max_tokens or DEFAULT_MAX_TOKENS, self.context_length)
        self.truncate, self.normalize = truncate, normalize
        # an external backend (OpenVINO, ONNX Runtime) holds one session/infer request: workers take turns
        self._external_lock = threading.Lock() if runner_of(model) is not None else contextlib.nullcontext()

    @property
    def external(self) -> str | None:
        """The engine running the forward outside PyTorch (``OpenVINO``, ``ONNX Runtime``), else None."""
        runner = runner_of(self.model)
        return runner.kind if runner is not None else None

    @property
    def context_length(self) -> int:
        """The most positions the model accepts (512 when its config does not say)."""
        config = self.model.config
        for key in ("max_position_embeddings", "n_positions"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return DEFAULT_MAX_TOKENS

    @property
    def backend(self) -> str:
        """What runs the forward (``OpenVINO``, ``ONNX Runtime`` or ``PyTorch <dtype>``) and the applied passes."""
        engine = self.external or f"PyTorch {str(next(self.model.parameters()).dtype)[6:]}"
        passes = []
        for config in applied_recipe(self.model).passes:
            inner = getattr(config, "chosen", None)  # fast-dense: the passes it chose
            passes.append(f"{config.name}: {' + '.join(_pass_name(p) for p in inner)}" if inner else config.name)
        return f"{engine} ({', '.join(passes) or 'as loaded'})"

    @property
    def tasks(self) -> set[str]:
        """The tasks this model supports: embed, classify, generate."""
        if self.family.kind == "decoder":
            return {"generate"}
        if self.family.kind == "seq2seq":
            return {"embed", "generate"}
        return {"embed", "classify"} if self._has_classifier() else {"embed"}

    def _has_classifier(self) -> bool:
        return "ForSequenceClassification" in type(self.model).__name__

    def require(self, task: str) -> None:
        if task not in self.tasks:
            raise UnsupportedTaskError(f"model '{self.name}' ({type(self.model).__name__}) does not support "
                                       f"{task}; it supports: {', '.join(sorted(self.tasks))}")

    def encode(self, texts: list[str], max_tokens: int | None = None, truncate: bool | None = None) -> list[list[int]]:
        """Token ids per text; too long -> truncated or :class:`InputTooLongError`, per the server's flag."""
        limit = max_tokens or self.max_tokens
        truncate = self.truncate if truncate is None else truncate
        ids = self._token_ids(texts)
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                if not truncate:
                    raise InputTooLongError(f"input[{i}] has {len(seq)} tokens; the limit is {limit} "
                                            "(shorten it, or start the server with --truncate)")
                ids[i] = seq[:limit - 1] + seq[-1:] if self.family.kind != "decoder" else seq[:limit]
        return ids

    def _token_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids with special tokens, untruncated: straight from the Rust tokenizer when there is one
        (half the per-request cost of the Python wrapper), else through the wrapper."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and backend.truncation is None and backend.padding is None:
            return [encoding.ids for encoding in backend.encode_batch(texts, add_special_tokens=True)]
        return self.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]

    def run(self, key: Hashable, batch_ids: list[list[int]]) -> list[Any]:
        """The batcher's forward: ``key`` is ``"embed"``, ``"classify"`` or ``("generate", params)``."""
        task = key[0] if isinstance(key, tuple) else key
        if task == "embed":
            return self.embed(batch_ids)
        if task == "classify":
            return self.classify(batch_ids)
        if task == "generate":
            sinks = [p.sink if isinstance(p, StreamPayload) else None for p in batch_ids]
            ids = [p.ids if isinstance(p, StreamPayload) else p for p in batch_ids]
            return self.generate(ids, key[1], sinks if any(sinks) else None)
        raise ValueError(f"unknown task {task!r}")

    def _pad(self, batch_ids: list[list[int]], left: bool = False) -> dict[str, torch.Tensor]:
        longest, pad = max(len(s) for s in batch_ids), self.tokenizer.pad_token_id or 0
        ids = torch.full((len(batch_ids), longest), pad, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), longest), dtype=torch.long)
        for row, seq in enumerate(batch_ids):
            cols = slice(longest - len(seq), longest) if left else slice(0, len(seq))
            ids[row, cols] = torch.tensor(seq, dtype=torch.long)
            mask[row, cols] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @torch.inference_mode()
    def embed(self, batch_ids: list[list[int]]) -> list[np.ndarray]:
        """Mean-pooled last hidden states, one float32 row per text, L2-normalised unless disabled.

        Rows stay numpy arrays: the app turns each into base64 bytes or a JSON list, whichever was asked.
        """
        with self._external_lock:
            out = run_model(self.model, self.family, self._pad(batch_ids))
        emb = out.embeddings
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        _check_finite(emb)
        return list(emb.float().cpu().numpy())

    @torch.inference_mode()
    def classify(self, batch_ids: list[list[int]]) -> list[list[float]]:
        """Class probabilities per text (softmax of the classification head's logits)."""
        with self._external_lock:
            out = run_model(self.model, self.family, self._pad(batch_ids))
        if out.logits is None or out.logits.dim() != 2:
            raise UnsupportedTaskError(f"model '{self.name}' produced no sequence-classification logits")
        probs = out.logits.float().softmax(-1)
        _check_finite(probs)
        return probs.cpu().tolist()

    def labels(self) -> dict[int, str]:
        id2label = getattr(self.model.config, "id2label", None) or {}
        return {int(k): str(v) for k, v in id2label.items()}

    @torch.inference_mode()
    def generate(self, batch_ids: list[list[int]], params: GenerateParams,
                 sinks: list[Any] | None = None) -> list[dict[str, Any]]:
        """One batched ``model.generate`` (KV cache on): text, token count and finish reason per prompt.

        ``sinks`` (one :class:`~autolite.serve.stream.TokenSink` or None per prompt) receive the text as it
        is generated; a cancelled sink stops its row early.
        """
        left = self.family.kind == "decoder"
        device = model_device(self.model)
        inputs = {k: v.to(device) for k, v in self._pad(batch_ids, left=left).items()}
        eos = self.tokenizer.eos_token_id
        sample = params.temperature >= MIN_TEMPERATURE
        if sample and params.seed is not None:
            torch.manual_seed(params.seed)
        options: dict[str, Any] = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p) \
            if sample else dict(do_sample=False)
        if sinks is not None:
            from transformers import StoppingCriteriaList

            options.update(streamer=BatchStreamer(sinks, self.tokenizer, eos),
                           stopping_criteria=StoppingCriteriaList([CancelledRows(sinks)]))
        out = self.model.generate(**inputs, max_new_tokens=params.max_new_tokens, use_cache=True,
                                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos, **options)
        new = out[:, inputs["input_ids"].shape[1]:] if left else out[:, 1:]  # seq2seq: drop the start token
        results = [self._finish(row.tolist(), eos, params.max_new_tokens) for row in new]
        for sink, result in zip(sinks or [], results):
            if sink is not None:
                sink.finish(result["text"], result["finish_reason"])
        return results

    def _finish(self, tokens: list[int], eos: int | None, limit: int) -> dict[str, Any]:
        if eos is not None and eos in tokens:
            tokens, reason = tokens[:tokens.index(eos)], "stop"
        else:
            reason = "length" if len(tokens) >= limit else "stop"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return {"text": text, "tokens": len(tokens), "finish_reason": reason}


def _pass_name(entry: dict[str, Any]) -> str:
    return entry["pass"] + (f" {entry['precision']}" if "precision" in entry else "")


def _check_finite(tensor: torch.Tensor) -> None:
    if not torch.isfinite(tensor).all():
        raise NumericsError("the model produced NaN/inf for this input")
