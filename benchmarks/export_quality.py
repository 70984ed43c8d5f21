"""Export quality: autolite's GPTQ INT4 in GGUF vs llama.cpp's own quantization, and the exact MLX INT4 export.

    .venv/bin/python benchmarks/export_quality.py --part gguf     # -> benchmarks/results/export_quality_gguf.json
    .venv/bin/python benchmarks/export_quality.py --part mlx      # -> benchmarks/results/export_quality_mlx.json
    .venv/bin/python benchmarks/export_quality.py --docs-only     # regenerate docs/EXPORTS.md from the JSONs
    nice -n 19 .venv/bin/python benchmarks/export_quality.py --prepare gguf   # only quantize (cached), no numbers

Each part saves its JSON after every row (``complete`` false until the last), so the two can run side by side.

GGUF (needs the ``llamacpp`` extra): SmolLM2-135M (autolite's ``smollm2``: FP32 weights dequantized from the
bundled Q4_1 GGUF, the only SmolLM2 weights available offline) is written as an F32 GGUF; llama.cpp's own
``llama_model_quantize`` (round-to-nearest per 32-block, the ``llama-quantize`` tool's code) makes Q4_0 / Q4_1 /
Q8_0 of it, token embedding kept F32 like ours. autolite's GPTQ and RTN INT4 g32 (symmetric -> Q4_0, asymmetric
-> Q4_1) and INT8 (-> Q8_0) are exported with ``autolite export --format gguf``. Perplexity: every file run in
llama.cpp on the corpus's held-out split (never used for calibration), token ids from the same tokenizer; the
torch models' perplexity from ``autolite.evaluate`` on the same texts.
MLX: the w4g64 preset (GPTQ) exported as it is; logits rel L2 vs our INT4 model (its own forward, and its
dequantized FP32 twin) and mlx-lm's greedy answer to the capital question vs our INT4 model's (HF ``generate``,
the same prompt token ids), and the old path (MLX re-quantizing the FP32 model).
GPTQ calibrates on the corpus's calibration split only (disjoint from the held-out texts measured here); the
quantized models are cached under ``$AUTOLITE_CACHE/export_quality`` (``--prepare`` builds them outside a timed
run), so a rerun does not redo GPTQ.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

import autolite
from autolite.cache import cache_root, mark_used
from autolite.data import corpus
from autolite.export.mlx import compare_with_model
from autolite.io import write_json_atomic
from autolite.quant import WeightOnly

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "EXPORTS.md"
QUESTION = "What is the capital of France?"
MLX_TEXTS = 16  # held-out texts the MLX logits are compared on (MLX's CPU kernels are slow on x86)
log = logging.getLogger("export_quality")


def machine() -> dict[str, Any]:
    """CPU model, cores and load (quality numbers do not depend on load; it is recorded all the same)."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()], "shared": True}


def heldout_ids(tok: Any) -> tuple[list[str], list[list[int]]]:
    texts = corpus("heldout").texts
    return texts, [tok(t, truncation=True, max_length=128).input_ids for t in texts]


def runtimes() -> dict[str, str]:
    """Versions of the optional runtimes the exports are run in."""
    found = {}
    for name in ("llama-cpp-python", "mlx", "mlx-lm", "gguf"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def torch_ppl(model: torch.nn.Module, tok: Any, texts: list[str]) -> float:
    return float(autolite.evaluate(model, tok, data=texts)["perplexity"])


def quantized(model, tok, label: str, config: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` compressed by ``config`` (GPTQ on the corpus's calibration split), cached by ``label``; the
    model and ``{"quantize_s", "calibration"}`` from when it was made."""
    path = cache_root() / "export_quality" / f"smollm2-{label}"
    made = json.loads((path / "quantize.json").read_text()) if (path / "quantize.json").is_file() else {}
    if made.get("config") != json.loads(json.dumps(config.to_dict())):  # not cached, or cached for another config
        log.info("quantizing %s, cached at %s", label, path)
        calib = corpus("calib")
        start = time.perf_counter()
        small = autolite.compress(model, [config], calib=calib.texts, tokenizer=tok)
        made = {"quantize_s": round(time.perf_counter() - start, 1), "calibration": f"{calib.source}, "
                f"{len(calib.texts)} sentences (disjoint from the held-out split)", "config": config.to_dict()}
        autolite.save_model(small, tok, path, overwrite=True, extra_files={"quantize.json": json.dumps(made)})
    mark_used(path)
    return autolite.load(str(path))[0], made


def llamacpp_quantize(src: Path, dst: Path, ftype: str) -> None:
    """llama.cpp's own quantization of ``src`` (F32 GGUF) to ``ftype``; token embedding / output kept F32."""
    import llama_cpp  # optional dependency (the llamacpp extra)

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.token_embedding_type = params.output_tensor_type = llama_cpp.GGML_TYPE_F32
    params.nthread = 2
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {ftype}")


GGUF_CONFIGS = [("autolite GPTQ w4g32 sym", "q4_0", WeightOnly(bits=4, group_size=32, method="gptq")),
                ("autolite GPTQ w4g32 asym", "q4_1", WeightOnly(bits=4, group_size=32, method="gptq", symmetric=False)),
                ("autolite INT8 per channel", "q8_0", WeightOnly(bits=8, group_size=None)),
                ("autolite RTN w4g32 sym", "q4_0", WeightOnly(bits=4, group_size=32)),
                ("autolite RTN w4g32 asym", "q4_1", WeightOnly(bits=4, group_size=32, symmetric=False))]
# the w4g64 preset (GPTQ INT4 g64 asymmetric + INT8 embedding and tied head): "our INT4 model" of the issue
MLX_CONFIG = ("w4g64-preset", WeightOnly(bits=4, group_size=64, symmetric=False, method="gptq", embedding=True))


def _label(name: str) -> str:
    return name.removeprefix("autolite ").replace(" ", "-")


def gguf_rows(model, tok, texts, ids, work: Path, save) -> None:
    """Append rows to ``save.rows`` (saved after each): F32, then per format llama.cpp's own RTN and our GPTQ,
    then our INT8 and RTN rows."""
    from benchmarks.llamacpp_util import llamacpp_perplexity  # needs the llamacpp extra

    rows = save.rows
    rows.append({"name": "FP32 torch", "format": "fp32", "source": "torch", "ppl_torch": torch_ppl(model, tok, texts)})
    fp32 = autolite.export(model, tok, work / "f32", format="gguf", float_type="f32", max_texts=8)
    rows.append({"name": "F32 GGUF", "format": "f32", "source": "autolite export", "ppl_llamacpp":
                 llamacpp_perplexity(fp32.path / "model.gguf", ids), "logits_rel_l2": fp32.validation.rel_l2})
    save()
    # most valuable first (a run cut short keeps them): each llama.cpp RTN file, then ours of that format
    for ftype in ("q4_0", "q4_1", "q8_0"):
        dst = work / f"llamacpp-{ftype}.gguf"
        llamacpp_quantize(fp32.path / "model.gguf", dst, ftype)
        rows.append({"name": f"llama.cpp {ftype.upper()} (RTN)", "format": ftype, "source": "llama.cpp quantize",
                     "ppl_llamacpp": llamacpp_perplexity(dst, ids)})
        save()
        for name, fmt, config in (c for c in GGUF_CONFIGS if c[1] == ftype and "GPTQ" in c[0]):
            rows.append(_autolite_row(model, tok, texts, ids, work, name, fmt, config))
            save()
    for name, fmt, config in (c for c in GGUF_CONFIGS if "GPTQ" not in c[0]):
        rows.append(_autolite_row(model, tok, texts, ids, work, name, fmt, config))
        save()


def _autolite_row(model, tok, texts, ids, work: Path, name: str, fmt: str, config: Any) -> dict[str, Any]:
    """One autolite quantization exported to GGUF: perplexity in torch and in llama.cpp, logits agreement."""
    from benchmarks.llamacpp_util import llamacpp_perplexity  # needs the llamacpp extra

    small, made = quantized(model, tok, _label(name), config)
    out = autolite.export(small, tok, work / _label(name), format="gguf", float_type="f32", max_texts=8)
    assert out.precision.startswith(fmt), (name, out.precision)
    row = {"name": name, "format": fmt, "source": "autolite export", **made,
           "ppl_torch": torch_ppl(small, tok, texts), "ppl_llamacpp": llamacpp_perplexity(out.path / "model.gguf", ids),
           "logits_rel_l2": out.validation.rel_l2, "top1_agreement": out.validation.extra.get("top1_agreement"),
           "notes": out.notes}
    log.info("%s", row)
    return row


def greedy_torch(model, ids: list[int], tokens: int = 24) -> list[int]:
    """HF ``generate``'s greedy continuation (token ids) of the prompt ``ids``."""
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False)
    return out[0, len(ids):].tolist()


def greedy_mlx(directory: Path, ids: list[int], tokens: int = 24) -> list[int]:
    """mlx-lm's greedy continuation (token ids) of the prompt ``ids``."""
    import mlx.core as mx  # optional dependency (the export extra)
    from mlx_lm import load, stream_generate

    mlx_model, mlx_tok = load(str(directory))
    return [r.token for r in stream_generate(mlx_model, mlx_tok, mx.array(ids), max_tokens=tokens)]


def mlx_rows(model, tok, work: Path) -> list[dict[str, Any]]:
    """Our GPTQ INT4 exported as it is (logits vs our model; the capital answer), and the old RTN path."""
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                     tokenize=False)
    ids = tok(prompt, add_special_tokens=False).input_ids
    small, made = quantized(model, tok, *MLX_CONFIG)
    exact = autolite.export(small, tok, work / "mlx-gptq", format="mlx", max_texts=8)
    own = compare_with_model(exact.path, small, tok, max_texts=MLX_TEXTS)  # our packed INT4 kernels
    old = autolite.export(model, tok, work / "mlx-rtn", format="mlx", bits=4, group_size=64, validate=False)
    ours, theirs = greedy_torch(small, ids), greedy_mlx(exact.path, ids)
    return [{"name": "MLX: autolite w4g64 (GPTQ) as it is", "precision": exact.precision, **made,
             "logits_rel_l2": own.rel_l2, "logits_rel_l2_dequantized": exact.validation.rel_l2,
             "texts": own.texts, "top1_agreement": own.extra.get("top1_agreement"),
             "same_tokens": ours == theirs, "answer_mlx": tok.decode(theirs, skip_special_tokens=True),
             "answer_autolite_int4": tok.decode(ours, skip_special_tokens=True)},
            {"name": "MLX: FP32 re-quantized by MLX (RTN q4 g64, the old path)", "precision": old.precision,
             "answer_mlx": tok.decode(greedy_mlx(old.path, ids), skip_special_tokens=True),
             "answer_fp32": tok.decode(greedy_torch(model, ids), skip_special_tokens=True)}]


def render(parts: dict[str, dict[str, Any]]) -> str:
    """docs/EXPORTS.md from the parts' JSON."""
    lines = ["# Exports: GGUF and MLX quality", "",
             "Generated by `benchmarks/export_quality.py` from `benchmarks/results/export_quality_{gguf,mlx}.json`; "
             "do not edit. Quality numbers (perplexity, logits) do not depend on the machine's load.", ""]
    if "gguf" in parts:
        g = parts["gguf"]
        lines += ["## GGUF: perplexity on the held-out corpus split, run in llama.cpp", "", _header(g), "",
                  f"Model: {g['model']}. {g['held_out']}", "",
                  "| model | GGUF type | made by | ppl in llama.cpp | ppl in torch | logits rel L2, llama.cpp vs torch |",
                  "|---|---|---|---|---|---|"]
        for r in g["rows"]:
            lines.append(f"| {r['name']} | {r['format'].upper()} | {r['source']} | {_f(r.get('ppl_llamacpp'))} | "
                         f"{_f(r.get('ppl_torch'))} | {_f(r.get('logits_rel_l2'), '.2e')} |")
        lines += ["", *[f"- {line}" for line in gguf_findings(g)], ""]
    if "mlx" in parts:
        m = parts["mlx"]
        lines += ["## MLX: autolite's INT4 exported as it is (mlx-lm, CPU)", "", _header(m), "",
                  f"Question (chat template, greedy, 24 tokens): \"{QUESTION}\"", "",
                  "| export | precision | logits rel L2 vs our INT4 model | greedy answer in mlx-lm |", "|---|---|---|---|"]
        for r in m["rows"]:
            answer = r["answer_mlx"].strip().replace("\n", " ").replace("|", "/")
            lines.append(f"| {r['name']} | {r['precision']} | {_f(r.get('logits_rel_l2'), '.2e')} | {answer} |")
        lines += ["", *[f"- {line}" for line in mlx_findings(m)], ""]
    return "\n".join(lines)


def _header(part: dict[str, Any]) -> str:
    m = part["machine"]
    state = "" if part.get("complete") else " **Partial run: the rows below are those finished.**"
    start = f"{part['load_average_start']} at the start, " if "load_average_start" in part else ""
    found = part.get("runtimes") or {"llama-cpp-python": part["llama_cpp_python"]}
    versions = ", ".join(f"{name} {v}" for name, v in found.items())
    return (f"Machine: {m['cpu']}, {m['cores']} cores, shared (load average {start}{m['load_average']} at the end); "
            f"torch {m['torch']}, {versions}. {part['timestamp']}, "
            f"`{part['command']}`.{state}")


def _f(value: Any, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def gguf_findings(part: dict[str, Any]) -> list[str]:
    """The comparisons the issue asks for, as sentences (computed from the rows)."""
    by = {r["name"]: r for r in part["rows"]}
    out = []
    for fmt, ours in (("Q4_0", "autolite GPTQ w4g32 sym"), ("Q4_1", "autolite GPTQ w4g32 asym"),
                      ("Q8_0", "autolite INT8 per channel")):
        if ours not in by or f"llama.cpp {fmt} (RTN)" not in by:
            continue
        mine, theirs = by[ours]["ppl_llamacpp"], by[f"llama.cpp {fmt} (RTN)"]["ppl_llamacpp"]
        verdict = "lower" if mine < theirs else "NOT lower"
        verdict += (" (target met)" if mine < theirs else " (target missed)") if fmt != "Q8_0" else (
            " (no target for Q8_0: ours has one scale per row, llama.cpp's one per 32-block)")
        out.append(f"{fmt}: {ours} {mine:.3f} vs llama.cpp's own {fmt} {theirs:.3f}: {verdict}, "
                   f"{(mine / theirs - 1) * 100:+.2f}%")
    if "llama.cpp Q4_1 (RTN)" in by and "F32 GGUF" in by:
        q41, f32 = by["llama.cpp Q4_1 (RTN)"]["ppl_llamacpp"], by["F32 GGUF"]["ppl_llamacpp"]
        out.append(f"Caveat for Q4_1: the FP32 model is the bundled Q4_1 GGUF dequantized (no other SmolLM2 weights "
                   f"are available offline), so its weights already sit on a Q4_1 grid of the same 32-blocks and "
                   f"llama.cpp's min/max Q4_1 of it lands back on that grid: {q41:.3f} vs FP32 {f32:.3f} "
                   f"({(q41 / f32 - 1) * 100:+.2f}%). autolite's asymmetric grid (range always includes 0, integer "
                   "zero point) cannot reproduce it; Q4_0 and Q8_0 are the fair comparisons.")
    calib = next((r["calibration"] for r in part["rows"] if "calibration" in r and "GPTQ" in r["name"]), None)
    if calib:
        out.append(f"GPTQ calibration: {calib}; ppl measured on the held-out split only.")
    out.append("Logits rel L2 (8 texts) compares llama.cpp running the file with the torch model holding the same "
               "weights; llama.cpp's F16 KV cache and 8-bit activation quantization in Q4/Q8 dot products give "
               "the residual.")
    return out


def mlx_findings(part: dict[str, Any]) -> list[str]:
    if not part["rows"]:
        return ["not measured"]
    exact, old = part["rows"]
    met = "target met" if exact["logits_rel_l2"] < 1e-3 else "target MISSED"
    return [f"logits rel L2 {exact['logits_rel_l2']:.2e} vs our INT4 model's own forward (whole texts: its packed "
            f"layers dequantize above 8 tokens per call) ({exact['logits_rel_l2_dequantized']:.2e} vs its "
            f"dequantized weights in an FP32 HF model), on "
            f"{exact['texts']} held-out texts: target < 1e-3, {met}; top-1 agreement {exact['top1_agreement']:.4f}",
            f"mlx-lm's greedy tokens are {'identical to' if exact['same_tokens'] else 'NOT the same as'} our INT4 "
            f"model's (HF generate, same prompt ids; one token per call, so our INT4 kernel with BF16 activations "
            f"runs there): ours answered {exact['answer_autolite_int4'].strip()!r}",
            f"GPTQ calibration: {exact['calibration']}; quantized in {exact['quantize_s']} s (cached for reruns)",
            f"old path (MLX round-to-nearest of the FP32 model) answered {old['answer_mlx'].strip()!r}; "
            f"FP32 torch answers {old['answer_fp32'].strip()!r}"]


class Saver:
    """Rows of one part, written to its JSON (with the machine and load) every time it is called."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header, self.rows = path, header, []

    def __call__(self, complete: bool = False) -> None:
        data = {**self.header, "machine": machine(), "rows": self.rows, "complete": complete}
        write_json_atomic(self.path, data)


def prepare(part: str) -> None:
    """Only make (and cache) the part's quantized models: GPTQ takes minutes, none of it is measured."""
    torch.manual_seed(0)
    model, tok, _ = autolite.load("smollm2")
    configs = [(_label(name), config) for name, _, config in GGUF_CONFIGS] if part == "gguf" else [MLX_CONFIG]
    for label, config in configs:
        log.info("%s: %s", label, quantized(model, tok, label, config)[1])


def measure(part: str) -> None:
    sys.path.insert(0, str(ROOT))
    import llama_cpp  # optional dependency (the llamacpp extra): its version goes into the JSON

    torch.manual_seed(0)
    model, tok, _ = autolite.load("smollm2")
    texts, ids = heldout_ids(tok)
    header = {"timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": f"benchmarks/export_quality.py --part {part}", "llama_cpp_python": llama_cpp.__version__,
              "load_average_start": [round(x, 2) for x in os.getloadavg()], "runtimes": runtimes(),
              "model": "SmolLM2-135M-Instruct (autolite `smollm2`: FP32 dequantized from the bundled Q4_1 GGUF)",
              "held_out": f"{len(texts)} held-out corpus sentences, {sum(len(i) - 1 for i in ids)} predicted "
                          "tokens, each text from a fresh context."}
    save = Saver(RESULTS / f"export_quality_{part}.json", header)
    with tempfile.TemporaryDirectory(prefix=f"export-quality-{part}-") as work:
        if part == "gguf":
            gguf_rows(model, tok, texts, ids, Path(work), save)
        else:
            save.rows.extend(mlx_rows(model, tok, Path(work)))
    save(complete=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("gguf", "mlx"), help="measure this part (else: only render the docs)")
    parser.add_argument("--docs-only", action="store_true", help="only regenerate docs/EXPORTS.md from the JSONs")
    parser.add_argument("--prepare", choices=("gguf", "mlx"), help="only quantize this part's models into the cache")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.prepare:
        return prepare(args.prepare)
    if args.part and not args.docs_only:
        measure(args.part)
    parts = {p: json.loads((RESULTS / f"export_quality_{p}.json").read_text()) for p in ("gguf", "mlx")
             if (RESULTS / f"export_quality_{p}.json").is_file()}
    DOC.write_text(render(parts))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
