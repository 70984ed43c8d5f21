"""llama.cpp (llama-cpp-python) decode speed and perplexity helpers, for the decode and export benchmarks.

    from benchmarks.llamacpp_util import llamacpp_decode_tps
    llamacpp_decode_tps(gguf_path, "The capital of France is", n_tokens=128, threads=2)
    # -> {"tok_s": ..., "tokens": 128, "prefill_s": ..., "threads": 2, "text": ..., ...}

    python benchmarks/llamacpp_util.py [GGUF] --tokens 128 --threads 2 --repeats 3   # bundled SmolLM2 by default

Decode = greedy, one ``llama_decode`` per token (``Llama.eval``) + argmax of the last logits, end-of-text
ignored so every run decodes exactly ``n_tokens``; the prompt's prefill is timed apart. Needs the optional
``llamacpp`` extra (pip install 'autolite[llamacpp]').
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from autolite.export import llamacpp


def llamacpp_decode_tps(gguf_path: str | Path, prompt: str, n_tokens: int = 128, threads: int = 2,
                        llm: Any = None) -> dict[str, Any]:
    """Greedy-decode ``n_tokens`` after ``prompt`` with llama.cpp; tokens per second of the decode steps only.

    Pass a loaded ``llm`` (``autolite.export.llamacpp.load(path, logits_all=False)``) to time repeats
    without reloading."""
    import llama_cpp  # optional dependency (the llamacpp extra)

    own = llm is None
    llm = llm or llamacpp.load(gguf_path, n_ctx=max(512, n_tokens + 256), threads=threads, logits_all=False)
    try:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=llm.metadata.get("tokenizer.ggml.add_bos_token") == "true",
                           special=True)
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)  # prefill
        prefill_s = time.perf_counter() - start
        out, vocab = [], llm.n_vocab()
        start = time.perf_counter()
        for _ in range(n_tokens):  # the last position's logits, read in place (no copy of all scores)
            token = int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(vocab,))))
            out.append(token)
            llm.eval([token])
        decode_s = time.perf_counter() - start
        return {"tok_s": n_tokens / decode_s, "tokens": n_tokens, "decode_s": decode_s, "prefill_s": prefill_s,
                "prompt_tokens": len(ids), "threads": threads, "model": str(gguf_path),
                "llama_cpp_python": llama_cpp.__version__,
                "text": llm.detokenize(out).decode("utf-8", errors="replace")}
    finally:
        if own:
            llm.close()


def llamacpp_perplexity(gguf_path: str | Path, token_ids: list[list[int]], threads: int = 1) -> float:
    """Perplexity of llama.cpp on sequences of token ids (each scored from a fresh context, positions 1..n-1)."""
    llm = llamacpp.load(gguf_path, n_ctx=max(256, max(len(ids) for ids in token_ids) + 8), threads=threads)
    try:
        total, count = 0.0, 0
        for ids in token_ids:
            nll, n = llamacpp.nll(llm, ids)
            total, count = total + nll, count + n
        return float(np.exp(total / max(count, 1)))
    finally:
        llm.close()


def main() -> None:
    from autolite.loading import smollm2_gguf

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="?", help="GGUF file (default: the bundled SmolLM2-135M Q4_1)")
    parser.add_argument("--prompt", default="The history of the city began")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    path = args.gguf or smollm2_gguf()
    llm = llamacpp.load(path, n_ctx=args.tokens + 256, threads=args.threads, logits_all=False)
    runs = [llamacpp_decode_tps(path, args.prompt, args.tokens, args.threads, llm=llm) for _ in range(args.repeats)]
    llm.close()
    result = {**runs[-1], "tok_s": statistics.median(r["tok_s"] for r in runs), "runs_tok_s": [r["tok_s"] for r in runs]}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
