"""Per-layer quantization sensitivity: measured (quantize one unit, compare outputs) and gradient-estimated.

Measured: for each unit (one linear, or all linears of one transformer layer) and each bit width b, only
that unit's weights are fake-quantized (group-wise symmetric, group 64 by default) and the model's outputs
on calibration texts are compared with the float model's: encoders ``1 - cosine`` of pooled embeddings,
decoders the mean next-token ``KL(p_float || p_quant)``.

Output (``output=True``, the default for mixed precision): the output-space Fisher estimate of the KL
change, ``0.5 * sum_tokens,outputs E[g^2] * (X (Q(W) - W)^T)^2`` with X the linear's calibration inputs
and g the gradient at its output of the log-likelihood of labels sampled from the model itself (so E[g^2]
is the Fisher's diagonal in output space; for encoders random projections of the pooled embedding). It
sees how each layer's inputs amplify its weight error, costs a few backward passes, and is divided by the
number of tokens (a per-token KL estimate). Quantization in every probe is the engine's own (``engine``).
With ``gptq=True`` the INT4 probes are rounded by GPTQ (each linear alone, its Hessian from the float
model's activations on the calibration windows GPTQ itself uses), so the estimate ranks layers by the error
GPTQ leaves rather than round-to-nearest's.

Estimated: the second-order Taylor/Fisher estimate ``0.5 * sum(F * (Q_b(W) - W)^2)`` with ``F`` the squared
gradients (diagonal empirical Fisher) of the decoder's next-token loss, or, for encoders, of random
projections of the pooled embedding (whose expected squared gradient is the Jacobian's diagonal).
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from autolite.arch import ArchSpec, is_conv1d
from autolite.errors import DataError
from autolite.eval.forward import mean_pool, model_inputs, tokenize
from autolite.quant.common import set_weight_matrix, transformer_linears, weight_matrix
from autolite.quant.fakequant import dequantized
from autolite.quant.formats import dequantize_int4, engine_format
from autolite.quant.gptq import gptq_quantize
from autolite.quant.sequential import calibration_windows, collect_hessians, window_batches

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
    output: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sensitivity":
        key = lambda b: int(b) if str(b).isdigit() else b  # noqa: E731
        fix = lambda table: {u: {key(b): v for b, v in row.items()} for u, row in table.items()}  # noqa: E731
        kinds = {k: fix(data.get(k, {})) for k in ("measured", "estimated", "output")}
        return cls(**{**data, "bits": [key(b) for b in data["bits"]], **kinds})


ESTIMATOR_TABLES = {"measured": "measured", "fisher": "estimated", "output": "output", "gptq": "output"}


def estimator_options(estimator: str) -> dict[str, bool]:
    """The :func:`analyze` switches that compute ``estimator``'s table (one of ``ESTIMATOR_TABLES``)."""
    return {"gradient": estimator == "fisher", "measured": estimator == "measured",
            "output": ESTIMATOR_TABLES[estimator] == "output", "gptq": estimator == "gptq"}


def estimator_losses(table: Sensitivity, estimator: str) -> dict[str, dict[Any, float]]:
    """``table``'s per-unit losses that ``estimator`` ranks by."""
    return getattr(table, ESTIMATOR_TABLES[estimator])


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
            bits: list[int], group_size: int, progress: Callable[[], None] | None = None, engine: bool = True,
            symmetric: bool = True) -> dict[str, dict[int, float]]:
    """Fidelity loss of quantizing each unit alone to each width (weights restored after each probe)."""
    modules = dict(model.named_modules())
    ref = _outputs(model, family, batch)
    table: dict[str, dict[int, float]] = {}
    for unit, names in units.items():
        originals = {n: weight_matrix(modules[n]).detach().clone() for n in names}
        table[unit] = {}
        for b in bits:
            for n in names:
                set_weight_matrix(modules[n], dequantized(originals[n], b, group_size, engine, symmetric))
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
    return {n: (f.t() if is_conv1d(modules[n]) else f) for n, f in fisher.items()}


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
             bits: list[int], group_size: int, engine: bool = True, symmetric: bool = True
             ) -> dict[str, dict[int, float]]:
    """``0.5 * sum(F * (Q_b(W) - W)^2)`` per unit and width."""
    modules = dict(model.named_modules())

    def cost(n: str, b: int) -> float:
        w = weight_matrix(modules[n]).detach().float()
        return 0.5 * float((fisher[n] * (dequantized(w, b, group_size, engine, symmetric) - w).pow(2)).sum())

    return _unit_table(units, bits, cost)


def _unit_table(units: dict[str, list[str]], formats: list, cost: Callable[[str, Any], float]
                ) -> dict[str, dict[Any, float]]:
    """``{unit: {format: sum of cost(member, format) over the unit's linears}}``."""
    return {unit: {fmt: sum(cost(n, fmt) for n in members) for fmt in formats} for unit, members in units.items()}


def analyze(model: torch.nn.Module, tokenizer: Any, family: ArchSpec, texts: list[str], *,
            bits: tuple[int, ...] = DEFAULT_BITS, group_size: int = 64, granularity: str = "linear",
            max_texts: int = 16, max_length: int = 64, gradient: bool = True, measured: bool = True,
            output: bool = False, engine: bool = True, progress: Callable[[], None] | None = None,
            symmetric: bool = True, gptq: bool = False) -> Sensitivity:
    """Measure (``measured``) and/or estimate (``gradient``: weight Fisher, ``output``: output Fisher)
    every unit's sensitivity to each of ``bits`` (widths or formats such as ``"w4g64"``); ``symmetric``:
    the engine's INT4 ranges; ``gptq``: output-Fisher INT4 probes rounded by GPTQ on ``texts``."""
    if not texts:
        raise DataError("sensitivity analysis needs at least one calibration text")
    if family.kind == "seq2seq":
        raise DataError("sensitivity analysis supports encoders and decoders; seq2seq is not supported yet")
    model.eval()
    batch = tokenize(tokenizer, texts[:max_texts], max_length)
    units = sensitivity_units(model, family, granularity)
    modules = dict(model.named_modules())
    numel = {u: sum(modules[n].weight.numel() for n in names) for u, names in units.items()}
    measured_table = (measure(model, family, batch, units, list(bits), group_size, progress, engine, symmetric)
                      if measured else {})
    estimated: dict[str, dict[int, float]] = {}
    if gradient:
        fisher = fisher_diagonal(model, family, batch, [n for names in units.values() for n in names])
        estimated = estimate(model, units, fisher, list(bits), group_size, engine, symmetric)
    hessians = None
    if output and gptq:
        hessians = gptq_hessians(model, family, tokenizer, texts, [n for ns in units.values() for n in ns])
    out_table = (output_fisher(model, family, batch, units, list(bits), group_size, engine, symmetric=symmetric,
                               hessians=hessians) if output else {})
    metric = "1 - cosine (pooled embeddings)" if family.kind == "encoder" else "next-token KL(float || quantized)"
    return Sensitivity(list(units), units, numel, list(bits), group_size, metric, measured_table, estimated,
                       out_table)


def output_fisher(model: torch.nn.Module, family: ArchSpec, batch: dict[str, torch.Tensor],
                  units: dict[str, list[str]], formats: list, group_size: int, engine: bool = True,
                  draws: int = 2, seed: int = 0, symmetric: bool = True,
                  hessians: dict[str, torch.Tensor] | None = None) -> dict[str, dict[Any, float]]:
    """Output-space diagonal Fisher estimate of each unit's per-token KL change in each format (INT4
    formats rounded by GPTQ with ``hessians[name]`` when given)."""
    names = [n for ns in units.values() for n in ns]
    modules = dict(model.named_modules())
    inputs, grads = _output_statistics(model, family, batch, names, draws, seed)
    tokens = float(batch["attention_mask"].sum())
    cache: dict[tuple, torch.Tensor] = {}

    def cost(n: str, fmt: Any) -> float:
        w = weight_matrix(modules[n]).detach().float()
        deq = _probe(w, fmt, group_size, engine, symmetric, (hessians or {}).get(n), cache, n)
        delta_y = inputs[n] @ (deq - w).t()
        return 0.5 * float((grads[n] * delta_y.pow(2)).sum()) / tokens

    with torch.no_grad():
        return _unit_table(units, formats, cost)


def _probe(w: torch.Tensor, fmt, group_size: int, engine: bool, symmetric: bool, hessian: torch.Tensor | None,
           cache: dict[tuple, torch.Tensor], name: str) -> torch.Tensor:
    """``w`` quantized to ``fmt``: GPTQ for engine INT4 formats when a Hessian is given, else as stored by RTN."""
    real = engine_format(fmt, group_size, w.shape[1]) if engine and hessian is not None else None
    if real is None or real[0] != 4:
        return dequantized(w, fmt, group_size, engine, symmetric).float()
    if (name, real) not in cache:  # w4g128 on a width 128 does not divide is w4g64: computed once
        q, scale, zero = gptq_quantize(w, hessian, real[1], symmetric, name=name)
        if len(cache) > 32:  # entries are reused only within one unit's formats
            cache.clear()
        cache[(name, real)] = dequantize_int4(q, scale, zero, real[1])
    return cache[(name, real)]


def gptq_hessians(model: torch.nn.Module, family: ArchSpec, tokenizer: Any, texts: list[str], names: list[str],
                  seq_len: int = 128, max_tokens: int = 8192, batch: int = 8) -> dict[str, torch.Tensor]:
    """Each named linear's GPTQ Hessian ``2/n XᵀX`` from the float model's activations on the calibration
    windows GPTQ uses (linears fed the same tensor share one)."""
    windows = calibration_windows(tokenizer, texts, seq_len, max_tokens)
    calls = [((), inputs) for inputs in window_batches(windows, family.kind, batch)]
    modules = dict(model.named_modules())
    hessians, groups = collect_hessians(model, {n: modules[n] for n in names}, calls)
    shared = {owner: hessians[owner].hessian() for owner in groups}
    return {n: shared[owner] for owner, members in groups.items() for n in members}


def _output_statistics(model, family: ArchSpec, batch, names: list[str], draws: int, seed: int):
    """Each linear's inputs on real tokens ``(N, in)`` and mean squared output gradient ``(N, out)``."""
    modules = dict(model.named_modules())
    mask = batch["attention_mask"].bool()
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def forward_hook(name):
        def hook(_m, args, _out) -> None:  # returning a value would replace the output
            if name not in inputs:
                inputs[name] = args[0].detach()[mask].float()
        return hook

    def backward_hook(name):
        def hook(_m, _grad_in, grad_out):
            g = grad_out[0].detach()[mask].float().pow(2) / draws
            grads[name] = grads[name] + g if name in grads else g
        return hook
    handles = [modules[n].register_forward_hook(forward_hook(n)) for n in names]
    handles += [modules[n].register_full_backward_hook(backward_hook(n)) for n in names]
    flags = {p: p.requires_grad for p in model.parameters()}
    generator = torch.Generator().manual_seed(seed)
    try:
        for p in flags:
            p.requires_grad_(False)
        for _ in range(draws):
            _sampled_loss(model, family, batch, generator).backward()
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags.items():
            p.requires_grad_(flag)
    return inputs, grads


def _sampled_loss(model, family: ArchSpec, batch, generator: torch.Generator) -> torch.Tensor:
    """Log-likelihood of labels sampled from the model (decoders) or a random projection of the pooled
    embedding (encoders), from input embeddings that require grad (so every linear's output gets one)."""
    embeds = model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    mask = batch["attention_mask"]
    if family.kind == "encoder":
        out = model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        pooled = mean_pool((hidden if hidden is not None else out.hidden_states[-1]).float(), mask)
        return (pooled @ torch.randn(pooled.shape[-1], generator=generator)).sum()
    log_p = F.log_softmax(model(inputs_embeds=embeds, attention_mask=mask).logits.float(), dim=-1)
    labels = torch.multinomial(log_p.detach().exp().reshape(-1, log_p.shape[-1]), 1, generator=generator)
    picked = log_p.reshape(-1, log_p.shape[-1]).gather(-1, labels).reshape(mask.shape)
    return picked[mask.bool()].sum()


def table_rows(table: Sensitivity, which: str = "measured") -> list[list[str]]:
    """Header + one row per unit: unit, weights, then the loss at each width."""
    values = getattr(table, which)
    header = ["unit", "weights"] + [f"{which[:4]}@{_label(b)}" for b in table.bits]
    rows = [[u, str(table.numel[u])] + [f"{values[u][b]:.3e}" for b in table.bits] for u in table.units if u in values]
    return [header] + rows


def write_csv(table: Sensitivity, path) -> None:
    kinds = [k for k in ("measured", "estimated", "output") if getattr(table, k)]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["unit", "weights"] + [f"{k}_{b}" for k in kinds for b in table.bits])
        for u in table.units:
            writer.writerow([u, table.numel[u]] + [getattr(table, k)[u][b] for k in kinds for b in table.bits])


def heatmap(table: Sensitivity, path, which: str = "measured") -> None:
    """Units x bits heat map of log10(loss) (matplotlib, Agg backend)."""
    import matplotlib  # lazy: the plotting stack loads only when a heat map is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = getattr(table, which)
    grid = [[math.log10(max(values[u][b], 1e-12)) for b in table.bits] for u in table.units]
    height = min(2 + 0.18 * len(table.units), 40)
    fig, ax = plt.subplots(figsize=(5.5, height))
    image = ax.imshow(grid, aspect="auto", cmap="magma_r")
    ax.set_xticks(range(len(table.bits)), [_label(b) for b in table.bits])
    ax.set_yticks(range(len(table.units)), [_short(u) for u in table.units], fontsize=6)
    ax.set_title(f"{which} sensitivity: log10({table.metric})", fontsize=8)
    fig.colorbar(image, ax=ax, shrink=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _label(fmt) -> str:
    return f"{fmt}b" if isinstance(fmt, int) else str(fmt)


def _short(name: str) -> str:
    prefixes = ("model.layers.", "bert.encoder.layer.", "encoder.layer.", "transformer.h.",
                "distilbert.transformer.layer.")
    for prefix in prefixes:
        if name.startswith(prefix):
            return "L" + name[len(prefix):]
    return name
