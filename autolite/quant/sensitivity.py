"""Per-layer quantization sensitivity: measured (quantize one unit, compare outputs) and gradient-estimated.

Measured: for each unit (one linear, or all linears of one transformer layer) and each bit width b, only
that unit's weights are fake-quantized (group-wise symmetric, group 64 by default) and the model's outputs
on calibration texts are compared with the float model's: encoders ``1 - cosine`` of pooled embeddings,
decoders the mean next-token ``KL(p_float || p_quant)``.

Estimated: the second-order Taylor/Fisher estimate ``0.5 * sum(F * (Q_b(W) - W)^2)`` with ``F`` the squared
gradients (diagonal empirical Fisher) of the decoder's next-token loss, or, for encoders, of random
projections of the pooled embedding (whose expected squared gradient is the Jacobian's diagonal).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

from autolite.arch import ArchSpec
from autolite.errors import DataError
from autolite.eval.forward import mean_pool, model_inputs, tokenize
from autolite.quant.qat import fake_quantize_weight, set_weight_matrix, transformer_linears, weight_matrix

log = logging.getLogger(__name__)
DEFAULT_BITS = (8, 6, 4, 3, 2)


@dataclasses.dataclass
class Sensitivity:
    """Sensitivity table: ``measured[unit][bits]`` and ``estimated[unit][bits]`` (higher = more sensitive)."""

    units: list[str]
    members: dict[str, list[str]]  # unit -> linear fqns it quantizes together
    numel: dict[str, int]
    bits: list[int]
    group_size: int
    metric: str
    measured: dict[str, dict[int, float]]
    estimated: dict[str, dict[int, float]]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sensitivity":
        fix = lambda table: {u: {int(b): v for b, v in row.items()} for u, row in table.items()}  # noqa: E731
        return cls(**{**data, "measured": fix(data["measured"]), "estimated": fix(data["estimated"])})


def sensitivity_units(model: torch.nn.Module, family: ArchSpec, granularity: str = "linear") -> dict[str, list[str]]:
    """Units to probe: each linear (``granularity="linear"``) or each transformer layer (``"layer"``)."""
    linears = list(transformer_linears(model, family))
    if granularity == "linear":
        return {name: [name] for name in linears}
    if granularity != "layer":
        raise DataError(f"granularity must be 'linear' or 'layer', got '{granularity}'")
    fqn = {id(m): n for n, m in model.named_modules()}
    units: dict[str, list[str]] = {}
    for view in family.layers(model):
        layer_name = fqn[id(view.module)]
        units[layer_name] = [n for n in linears if n.startswith(layer_name + ".")]
    return units


def _outputs(model: torch.nn.Module, family: ArchSpec, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the fidelity loss compares: pooled embeddings (encoders) or next-token log-probs (decoders)."""
    inputs = model_inputs(family, batch, batch["input_ids"].device)
    if family.kind == "encoder":
        out = model(**inputs, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        return mean_pool((hidden if hidden is not None else out.hidden_states[-1]).float(), inputs["attention_mask"])
    return F.log_softmax(model(**inputs).logits.float(), dim=-1)


def _fidelity_loss(family: ArchSpec, out: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    if family.kind == "encoder":
        return max(0.0, float(1.0 - F.cosine_similarity(out, ref, dim=-1).mean()))
    kl = (ref.exp() * (ref - out)).sum(-1)  # (B, T)
    return max(0.0, float(kl[mask.bool()].mean()))


@torch.no_grad()
def measure(model: torch.nn.Module, family: ArchSpec, batch: dict[str, torch.Tensor], units: dict[str, list[str]],
            bits: list[int], group_size: int, progress: Callable[[], None] | None = None
            ) -> dict[str, dict[int, float]]:
    """Fidelity loss of quantizing each unit alone to each width (weights restored after each probe)."""
    modules = dict(model.named_modules())
    ref = _outputs(model, family, batch)
    table: dict[str, dict[int, float]] = {}
    for unit, names in units.items():
        originals = {n: weight_matrix(modules[n]).detach().clone() for n in names}
        table[unit] = {}
        for b in bits:
            for n in names:
                set_weight_matrix(modules[n], fake_quantize_weight(originals[n], b, group_size))
            table[unit][b] = _fidelity_loss(family, _outputs(model, family, batch), ref, batch["attention_mask"])
            if progress:
                progress()
        for n in names:
            set_weight_matrix(modules[n], originals[n])
    return table


def fisher_diagonal(model: torch.nn.Module, family: ArchSpec, batch: dict[str, torch.Tensor], names: list[str],
                    samples: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Squared-gradient (diagonal Fisher) of each named linear's ``(out, in)`` weight, averaged over ``samples``."""
    modules = dict(model.named_modules())
    weights = {n: modules[n].weight for n in names}
    flags = {n: w.requires_grad for n, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(True)
    fisher = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
    generator = torch.Generator().manual_seed(seed)
    runs = samples if family.kind == "encoder" else 1
    for _ in range(runs):
        loss = _gradient_loss(model, family, batch, generator)
        grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
        for (n, w), g in zip(weights.items(), grads):
            if g is not None:
                fisher[n] += g.float().pow(2) / runs
    for n, w in weights.items():
        w.requires_grad_(flags[n])
    return {n: (f.t() if type(modules[n]).__name__ == "Conv1D" else f) for n, f in fisher.items()}


def _gradient_loss(model, family: ArchSpec, batch, generator: torch.Generator) -> torch.Tensor:
    out = _outputs(model, family, batch)
    if family.kind == "encoder":
        direction = torch.randn(out.shape[-1], generator=generator)
        return (out @ direction).sum()
    ids, mask = batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()
    nll = -out[:, :-1].gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return nll[mask].sum()


@torch.no_grad()
def estimate(model: torch.nn.Module, units: dict[str, list[str]], fisher: dict[str, torch.Tensor],
             bits: list[int], group_size: int) -> dict[str, dict[int, float]]:
    """``0.5 * sum(F * (Q_b(W) - W)^2)`` per unit and width."""
    modules = dict(model.named_modules())
    table: dict[str, dict[int, float]] = {}
    for unit, names in units.items():
        table[unit] = {}
        for b in bits:
            total = 0.0
            for n in names:
                w = weight_matrix(modules[n]).detach().float()
                total += 0.5 * float((fisher[n] * (fake_quantize_weight(w, b, group_size) - w).pow(2)).sum())
            table[unit][b] = total
    return table


def analyze(model: torch.nn.Module, tokenizer: Any, family: ArchSpec, texts: list[str], *,
            bits: tuple[int, ...] = DEFAULT_BITS, group_size: int = 64, granularity: str = "linear",
            max_texts: int = 16, max_length: int = 64, gradient: bool = True, measured: bool = True,
            progress: Callable[[], None] | None = None) -> Sensitivity:
    """Measure (``measured``) and/or estimate from gradients (``gradient``) every unit's sensitivity."""
    if not texts:
        raise DataError("sensitivity analysis needs at least one calibration text")
    if family.kind == "seq2seq":
        raise DataError("sensitivity analysis supports encoders and decoders; seq2seq is not supported yet")
    model.eval()
    batch = tokenize(tokenizer, texts[:max_texts], max_length)
    units = sensitivity_units(model, family, granularity)
    modules = dict(model.named_modules())
    numel = {u: sum(modules[n].weight.numel() for n in names) for u, names in units.items()}
    measured_table = measure(model, family, batch, units, list(bits), group_size, progress) if measured else {}
    estimated: dict[str, dict[int, float]] = {}
    if gradient:
        fisher = fisher_diagonal(model, family, batch, [n for names in units.values() for n in names])
        estimated = estimate(model, units, fisher, list(bits), group_size)
    metric = "1 - cosine (pooled embeddings)" if family.kind == "encoder" else "next-token KL(float || quantized)"
    return Sensitivity(list(units), units, numel, list(bits), group_size, metric, measured_table, estimated)


def table_rows(table: Sensitivity, which: str = "measured") -> list[list[str]]:
    """Header + one row per unit: unit, weights, then the loss at each width."""
    values = getattr(table, which)
    header = ["unit", "weights"] + [f"{which[:4]}@{b}b" for b in table.bits]
    rows = [[u, str(table.numel[u])] + [f"{values[u][b]:.3e}" for b in table.bits] for u in table.units if u in values]
    return [header] + rows


def write_csv(table: Sensitivity, path) -> None:
    import csv

    kinds = [k for k in ("measured", "estimated") if getattr(table, k)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["unit", "weights"] + [f"{k}_{b}" for k in kinds for b in table.bits])
        for u in table.units:
            writer.writerow([u, table.numel[u]] + [getattr(table, k)[u][b] for k in kinds for b in table.bits])


def heatmap(table: Sensitivity, path, which: str = "measured") -> None:
    """Units x bits heat map of log10(loss) (matplotlib, Agg backend)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = getattr(table, which)
    grid = [[math.log10(max(values[u][b], 1e-12)) for b in table.bits] for u in table.units]
    height = min(2 + 0.18 * len(table.units), 40)
    fig, ax = plt.subplots(figsize=(5.5, height))
    image = ax.imshow(grid, aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(table.bits)), [f"{b}-bit" for b in table.bits])
    ax.set_yticks(range(len(table.units)), [_short(u) for u in table.units], fontsize=6)
    ax.set_title(f"{which} sensitivity: log10({table.metric})", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str) -> str:
    prefixes = ("model.layers.", "bert.encoder.layer.", "encoder.layer.", "transformer.h.",
                "distilbert.transformer.layer.")
    for prefix in prefixes:
        if name.startswith(prefix):
            return "L" + name[len(prefix):]
    return name
