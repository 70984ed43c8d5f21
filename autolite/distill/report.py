"""``report.md`` of a distillation run: before/after fidelity, speed vs the teacher, the training curve."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from autolite.data import TextData


def split_heldout(data: TextData, every: int = 5) -> tuple[TextData, TextData]:
    """(train, heldout): every ``every``-th text is held out (same rule as the embedded corpus)."""
    if len(data) < every:
        raise ValueError(f"need at least {every} texts to hold some out")
    idx_train = [i for i in range(len(data)) if i % every]
    idx_held = list(range(0, len(data), every))

    def pick(idx: list[int], tag: str) -> TextData:
        labels = [data.labels[i] for i in idx] if data.labels is not None else None
        return TextData([data.texts[i] for i in idx], labels, f"{data.source}:{tag}")
    return pick(idx_train, "train"), pick(idx_held, "heldout")


def curve_rows(history: list[dict[str, Any]], key: str) -> list[tuple[int, float | None, float]]:
    """(step, mean training loss since the previous evaluation, eval metric) at each evaluation."""
    rows, losses = [], []
    for record in history:
        if "loss" in record:
            losses.append(record["loss"])
        if key in record.get("eval", {}):
            mean = sum(losses) / len(losses) if losses else None
            rows.append((record["step"], mean, record["eval"][key]))
            losses = []
    return rows


def curve_plot(rows: list[tuple[int, float | None, float]], key: str, path: Path) -> Path | None:
    """Plot the held-out metric against the step; None when matplotlib is missing."""
    try:
        import matplotlib  # lazy and optional: the plot is skipped when matplotlib is missing

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r[0] for r in rows], [r[2] for r in rows], marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel(f"held-out {key} vs teacher")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def distill_markdown(summary: dict[str, Any], rows: list[tuple[int, float | None, float]], key: str) -> str:
    """The report text; ``summary`` holds teacher, layers, steps, elapsed, before/after, speed."""
    lines = [f"# autolite distillation: {summary['teacher']} -> {summary['student_layers']}-layer student", "",
             f"Student keeps teacher layers {summary['kept_layers']}; trained {summary['steps']} steps in "
             f"{summary['elapsed_s']:.0f} s on {summary['data']} (seed {summary['seed']}); "
             f"evaluated on {summary['heldout']} held-out texts.", "", _throughput(summary), "",
             "| metric | before distillation | after |", "|---|---|---|",
             f"| held-out {key} vs teacher | {_fmt(summary.get('before'))} | {_fmt(summary.get('after'))} |"]
    speed = summary.get("speed")
    if speed:
        lines.append(f"| speed-up vs teacher (batch {speed['batch']} x seq {speed['seq']}) | - | "
                     f"{speed['speedup']:.2f}x ({speed['teacher_ms']:.1f} -> {speed['student_ms']:.1f} ms) |")
        lines.append(f"| weights | {speed['teacher_mb']:.1f} MiB | {speed['student_mb']:.1f} MiB |")
    lines += ["", "Timings come from one interleaved run on this machine (indicative when the CPU is shared).", "",
              "## Training curve", "", f"| step | mean training loss | held-out {key} |", "|---|---|---|"]
    lines += [f"| {s} | {'-' if loss is None else f'{loss:.4f}'} | {value:.4f} |" for s, loss, value in rows]
    if summary.get("plot"):
        lines += ["", f"![curve]({summary['plot']})"]
    return "\n".join(lines) + "\n"


def _throughput(summary: dict[str, Any]) -> str:
    batch, steps, elapsed = summary.get("batch_size"), summary["steps"], summary["elapsed_s"]
    if not batch or not elapsed:
        return ""
    share = summary.get("augment")
    augmented = f"; {share:.0%} of the samples augmented (crops, concatenations, token replacement/drops)" \
        if share else ""
    return f"Training throughput: {steps * batch / elapsed:.1f} samples/s (batch {batch}){augmented}."


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
