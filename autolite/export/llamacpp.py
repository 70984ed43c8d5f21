"""Running a GGUF file in llama.cpp (llama-cpp-python, the optional ``llamacpp`` extra).

Token ids go in as autolite's tokenizer produced them (no re-tokenization), so logits and perplexity
compare position by position with the torch model.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from autolite.arch import family_of
from autolite.errors import BackendUnavailableError
from autolite.export.validate import Tolerance, Validation, torch_outputs, validate


def available() -> bool:
    """True when llama-cpp-python is importable."""
    return importlib.util.find_spec("llama_cpp") is not None


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """llama.cpp logs model loading to fd 2 even with ``verbose=False``: silence it while loading."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load(path: str | Path, n_ctx: int = 512, threads: int = 1, logits_all: bool = True) -> Any:
    """A ``llama_cpp.Llama`` for the GGUF at ``path`` (CPU). One thread by default: llama.cpp's threads meet at
    a spinning barrier each op, which collapses on a shared machine (measured 7-12x slower with 2 threads
    than with 1 on 2 busy cores); pass ``threads`` for speed runs on a quiet one."""
    if not available():
        raise BackendUnavailableError("llama.cpp is not installed: pip install 'autolite[llamacpp]' "
                                      "(llama-cpp-python builds llama.cpp from source, a few minutes)")
    import llama_cpp  # optional dependency

    with _quiet_stderr():
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                               n_threads_batch=threads, logits_all=logits_all, verbose=False)


def logits(llm: Any, ids: list[int]) -> np.ndarray:
    """``(len(ids), vocab)`` next-token logits of one sequence, from a fresh context."""
    llm.reset()
    llm.eval(list(ids))
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def nll(llm: Any, ids: list[int]) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of ``ids`` (positions 1..n-1) and the count."""
    if len(ids) < 2:
        return 0.0, 0
    scores = torch.from_numpy(logits(llm, ids)[:-1])
    logprobs = torch.log_softmax(scores.double(), -1)
    target = torch.tensor(ids[1:])
    return float(-logprobs.gather(-1, target[:, None]).sum()), len(ids) - 1


def runner(llm: Any):
    """``batch -> {"logits": (B, T, V)}`` computed by llama.cpp row by row (padding positions stay 0)."""
    def run(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        out = None
        for row in range(ids.shape[0]):
            row_logits = torch.from_numpy(logits(llm, ids[row][mask[row]].tolist()))
            if out is None:
                out = torch.zeros(*ids.shape, row_logits.shape[-1])
            out[row, mask[row]] = row_logits
        return {"logits": out}
    return run


def validate_logits(path: Path, model: torch.nn.Module, tokenizer: Any, max_texts: int,
                    max_rel_l2: float) -> Validation:
    """Load ``path`` in llama.cpp and compare its next-token logits with ``model`` on the corpus."""
    family = family_of(model)
    llm = load(path)
    try:
        return validate(runner(llm), lambda batch: {"logits": torch_outputs(model, family, batch)["logits"]},
                        tokenizer, Tolerance(max_rel_l2=max_rel_l2), what="gguf (llama.cpp)",
                        against="the torch model, run in llama.cpp", max_texts=max_texts)
    finally:
        llm.close()
