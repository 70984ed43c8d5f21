"""``report.md`` for ``autolite compress``: what was done, measured before/after, and a latency plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from autolite.report.tables import comparison_rows, markdown_table


def write_report(result: dict[str, Any], out_dir: Path) -> Path:
    """Write ``report.md`` (and ``latency.png``) into ``out_dir``; returns the report path."""
    plot = latency_plot(result, out_dir / "latency.png")
    machine = result.get("machine", {})
    lines = [
        f"# autolite report: {result['model']} with recipe `{result['recipe']['name']}`", "",
        f"Measured on {machine.get('cpu_model', 'unknown CPU')} ({machine.get('usable_cores', '?')} usable cores"
        f"{', GPU ' + machine['gpus'][0]['name'] if machine.get('gpus') else ''}), {result['timestamp']}, "
        f"autolite {result['autolite_version']}. Baseline: the same model in FP32 eager PyTorch, timed "
        f"interleaved with the candidate in one process ({result['candidate']['runs']} runs each after warm-up).",
        "", markdown_table(comparison_rows(result), ("metric", "FP32 eager (before)", "compressed (after)")), "",
        "## Recipe", "", "```yaml", _recipe_yaml(result["recipe"]), "```", "",
    ]
    if result.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in result["notes"]] + [""]
    if plot:
        lines += ["## Latency per run", "", f"![latency]({plot.name})", ""]
    fidelity = result.get("fidelity", {})
    lines += [f"Fidelity data: {fidelity.get('data')} ({fidelity.get('texts')} texts).", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _recipe_yaml(recipe: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False).strip()


def latency_plot(result: dict[str, Any], path: Path) -> Path | None:
    """Box plot of the per-run latencies of baseline and candidate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.boxplot([result["baseline"]["samples_ms"], result["candidate"]["samples_ms"]])
    ax.set_xticks([1, 2], ["FP32 eager", result["recipe"]["name"]])
    ax.set_ylabel(f"ms per batch of {result['batch']} x {result['seq']}")
    ax.set_title(f"{result['model']}: {result['speedup']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
