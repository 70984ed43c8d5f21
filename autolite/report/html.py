"""``report.html`` (one self-contained file: inline SVG plots, no network) and ``report.md`` of an optimize run."""
from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
         "th{background:#f3f3f3}td:first-child{text-align:left}pre{background:#f6f6f6;padding:1em;overflow:auto}"
         "figure{margin:1em 0}figcaption{color:#555;font-size:90%}")


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF credits (namespace URLs only)
    return text[text.index("<svg"):]


def pareto_plot(result: dict[str, Any]) -> str:
    """Speed-up vs validation accuracy of every trial; marker area ~ model size; the front, budget and pick."""
    fig, ax = plt.subplots(figsize=(8, 5))
    rows = [t for t in result["trials"] if "speedup" in t]
    for state, style in (("complete", dict(c="tab:blue", alpha=0.7)), ("pruned", dict(facecolors="none",
                                                                                     edgecolors="tab:gray"))):
        pts = [t for t in rows if t["state"] == state]
        if pts:
            acc = [t.get("val_acc", t.get("small_acc")) for t in pts]
            ax.scatter([t["speedup"] for t in pts], acc, s=[max(12.0, 4 * t["size_mb"]) for t in pts],
                       label=f"{state} ({'validation' if state == 'complete' else 'proxy'} accuracy)", **style)
    front = _front([t for t in rows if t["state"] == "complete"])
    if front:
        ax.plot([t["speedup"] for t in front], [t["val_acc"] for t in front], "-", c="tab:blue", lw=1)
    fp32, pick = result["fp32"], result["pick"]
    ax.axhline(fp32["val_acc"] - result["max_drop"], ls="--", c="tab:red", lw=1, label="accuracy budget")
    ax.scatter([1.0], [fp32["val_acc"]], marker="s", c="black", label="FP32 eager")
    ax.scatter([pick["speedup"]], [pick["val_acc"]], marker="*", s=300, c="tab:orange", label="pick", zorder=5)
    ax.set_xlabel(f"speed-up over FP32 eager (batch {result['batch']} x seq {result['seq']})")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    return _svg(fig)


def _front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials no other trial beats on both speed-up and accuracy, by speed-up."""
    front, best = [], -1.0
    for t in sorted(rows, key=lambda t: (-t["speedup"], -t["val_acc"])):
        if t["val_acc"] > best:
            front.append(t)
            best = t["val_acc"]
    return sorted(front, key=lambda t: t["speedup"])


def sensitivity_plot(sens: dict[str, Any]) -> str:
    kinds = list(sens["rows"])
    values = [sens["rows"][k] for k in kinds]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(sens["layers"]) + 2), 2.4))
    top = max([1.0] + [v for row in values for v in row])
    image = ax.imshow(values, cmap="Reds", aspect="auto", vmin=min(0.0, *[v for row in values for v in row]), vmax=top)
    ax.set_xticks(range(len(sens["layers"])), sens["layers"], rotation=45)
    ax.set_yticks(range(len(kinds)), kinds)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy drop (points)")
    return _svg(fig)


def latency_plot(table: dict[str, dict[str, float]]) -> str:
    kinds = sorted({k for rows in table.values() for k in rows})
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(kinds) * len(table) + 1.5))
    height = 0.8 / max(len(table), 1)
    for n, (name, rows) in enumerate(table.items()):
        ax.barh([i + n * height for i in range(len(kinds))], [rows.get(k, 0.0) for k in kinds], height, label=name)
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(kinds))], kinds, fontsize=8)
    ax.set_xlabel("ms per forward")
    ax.legend(fontsize=8)
    return _svg(fig)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def summary_rows(result: dict[str, Any]) -> list[list[str]]:
    fp32, pick = result["fp32"], result["pick"]
    rows = [["model", result["model"], pick["label"]],
            ["validation accuracy (%)", f"{fp32['val_acc']:.2f}", f"{pick['val_acc']:.2f}"],
            [f"test accuracy (%) [{result['test_source']}]", f"{fp32['test_acc']:.2f}", f"{pick['test_acc']:.2f}"],
            [f"ms per batch of {result['batch']} x {result['seq']}", f"{pick['fp32_ms']:.1f}", f"{pick['ms']:.1f}"],
            ["speed-up over FP32 eager (same run)", "1.00x", f"{pick['speedup']:.2f}x"],
            ["size (MiB)", f"{pick['fp32_size_mb']:.1f}", f"{pick['size_mb']:.1f}"],
            [f"energy per inference (J, {pick['energy']['source']})",
             f"{pick['energy']['fp32_joules_per_inference']:.4f}", f"{pick['energy']['joules_per_inference']:.4f}"]]
    if pick.get("best_dense"):
        dense = pick["best_dense"]
        rows.append([f"best dense candidate ({dense['label']})", f"{dense['speedup']:.2f}x",
                     f"pick {dense['pick_over_dense']:.2f}x faster"])
    return rows


def trial_rows(result: dict[str, Any]) -> list[list[str]]:
    def fmt(value: Any, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else ""
    return [[t["number"], t.get("label", ""), t["state"], fmt(t.get("small_acc"), ".1f"), fmt(t.get("val_acc"), ".2f"),
             fmt(t.get("speedup"), ".2f"), fmt(t.get("size_mb"), ".1f"), t.get("pruned") or t.get("error") or ""]
            for t in result["trials"]]


TRIAL_HEADERS = ["trial", "candidate", "state", "proxy acc", "val acc", "speed-up", "MiB", "why stopped"]


def write_html(result: dict[str, Any], path: Path) -> None:
    recipe = yaml.safe_dump({"passes": result["pick"]["recipe"]}, sort_keys=False)
    machine = [[k, v] for k, v in result["machine"]["summary"].items()]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>autolite optimize: {html.escape(result['model'])}"
        f"</title><style>{STYLE}</style></head><body>",
        f"<h1>autolite optimize: {html.escape(result['model'])}</h1>",
        f"<p>Objective {result['objective']}, budget {result['max_drop']:g} accuracy points, "
        f"{len(result['trials'])} trials{' (interrupted: best so far)' if result['interrupted'] else ''}.</p>",
        _table(["", "FP32 eager", "pick"], summary_rows(result)),
        "<h2>Pareto front</h2><figure id='pareto'>", pareto_plot(result),
        "<figcaption>Marker area ~ model size. Hollow: stopped at a cheap stage (proxy accuracy).</figcaption>",
        "</figure>",
        "<h2>Per-layer sensitivity</h2><figure id='sensitivity'>", sensitivity_plot(result["sensitivity"]),
        f"<figcaption>Accuracy drop when one sub-layer's output is zeroed, on {result['sensitivity']['rows_scored']} "
        "validation rows.</figcaption></figure>",
        "<h2>Latency per layer kind</h2><figure id='latency'>", latency_plot(result["layer_latency"]), "</figure>",
        "<h2>Chosen recipe</h2><pre>", html.escape(recipe), "</pre>",
        f"<p>Replay: <code>{html.escape(result['replay'])}</code></p>",
        f"<h2>Energy</h2><p>{html.escape(result['pick']['energy']['note'])}</p>",
        "<h2>Machine</h2>", _table(["", ""], machine),
        "<h2>Trials</h2>", _table(TRIAL_HEADERS, trial_rows(result)), "</body></html>"]
    path.write_text("".join(parts), encoding="utf-8")


def write_markdown(result: dict[str, Any], path: Path) -> None:
    def md(headers: list[str], rows: list[list[Any]]) -> str:
        lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])
    recipe = yaml.safe_dump({"passes": result["pick"]["recipe"]}, sort_keys=False)
    text = "\n\n".join([
        f"# autolite optimize: {result['model']}", md(["", "FP32 eager", "pick"], summary_rows(result)),
        f"Energy: {result['pick']['energy']['note']}", "## Chosen recipe", f"```yaml\n{recipe}```",
        f"Replay: `{result['replay']}`", "## Trials", md(TRIAL_HEADERS, trial_rows(result)), ""])
    path.write_text(text, encoding="utf-8")
