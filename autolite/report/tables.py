"""The before/after table shared by the terminal, ``report.md`` and the docs."""
from __future__ import annotations

from typing import Any

FIDELITY_LABELS = {
    "cosine": "embedding cosine vs FP32",
    "top1_agreement": "top-1 agreement vs FP32",
    "next_token_agreement": "next-token agreement vs FP32",
    "perplexity": "perplexity",
    "perplexity_rel_change": "perplexity change vs FP32",
    "accuracy": "accuracy",
}


def comparison_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows (metric, baseline, candidate) of a ``compare`` result."""
    base, cand = result["baseline"], result["candidate"]
    shape = f"batch {result['batch']} x seq {result['seq']}, {result['threads']} threads"
    rows = [
        (f"latency median ({shape})", f"{base['median_ms']:.1f} ms", f"{cand['median_ms']:.1f} ms"),
        ("latency min / max", f"{base['min_ms']:.1f} / {base['max_ms']:.1f} ms",
         f"{cand['min_ms']:.1f} / {cand['max_ms']:.1f} ms"),
        ("throughput", f"{base['throughput_per_s']:.1f} seq/s", f"{cand['throughput_per_s']:.1f} seq/s"),
        ("speed-up", "1.00x", f"{result['speedup']:.2f}x"),
        ("weights in memory", f"{base['size_mb']:.1f} MiB", f"{cand['size_mb']:.1f} MiB"),
        ("parameters", f"{base['params'] / 1e6:.2f} M", f"{cand['params'] / 1e6:.2f} M"),
        ("peak extra memory per forward", _mb(base["peak_mem_mb"]), _mb(cand["peak_mem_mb"])),
        ("first call (incl. compile)", f"{base['first_call_s']:.2f} s", f"{cand['first_call_s']:.2f} s"),
    ]
    fidelity = result.get("fidelity", {})
    for key, label in FIDELITY_LABELS.items():
        if fidelity.get(key) is None:
            continue
        reference = _reference_value(key, fidelity)
        rows.append((label, reference, _fmt(key, fidelity[key])))
    return rows


def _reference_value(key: str, fidelity: dict[str, Any]) -> str:
    if key in ("cosine", "top1_agreement", "next_token_agreement"):
        return "1 (itself)"
    if key == "perplexity_rel_change":
        return "0%"
    ref = fidelity.get(f"{key}_ref")
    return _fmt(key, ref) if ref is not None else "-"


def _fmt(key: str, value: float) -> str:
    if key == "perplexity_rel_change":
        return f"{value * 100:+.2f}%"
    if key == "perplexity":
        return f"{value:.3f}"
    return f"{value:.5f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MiB"


def markdown_table(rows: list[tuple[str, str, str]], headers: tuple[str, str, str]) -> str:
    lines = [f"| {' | '.join(headers)} |", "|" + "---|" * len(headers)]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
