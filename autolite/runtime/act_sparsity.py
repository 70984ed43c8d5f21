"""Activation skipping at decode (TEAL-style): the ``activation-sparsity`` pass.

Each linear of the decoder blocks gets a threshold, calibrated on calibration text so that the target
fraction of its input activations falls below it in magnitude (``allocation="uniform"``), or its share of
the target when the split follows calibrated skip errors (``"sensitivity"``). At decode (a call of at most
``max_rows`` tokens) the layer keeps the inputs above the threshold and multiplies them by only the
matching rows of its weight, stored transposed ``(in, out)`` so those rows are contiguous: the memory
read shrinks with the sparsity (an ``embedding_bag`` over the active rows). Longer calls
(prefill, evaluation) stay dense unless :func:`sparse_everywhere` is on, which applies the same
threshold mask densely, to measure the quality of what decode computes.

The sparse matmul is one ``autolite::sparse_input_linear`` custom op, so the compiled decode step keeps
one graph (the variable number of active inputs lives inside the op).
"""
from __future__ import annotations

import contextlib
import dataclasses
import heapq
import logging
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from autolite.arch.base import is_conv1d
from autolite.config import PassConfig
from autolite.errors import RecipeError
from autolite.passes import PassContext, register_pass
from autolite.quant.sequential import calibration_windows

log = logging.getLogger(__name__)
SAMPLE_PER_LAYER = 200_000  # activation magnitudes kept per layer for the quantile
SAMPLE_PER_CALL = 16_384  # ... of which at most this many from one calibration forward (bounded memory)
GRID = tuple(i / 20 for i in range(1, 19))  # the sparsities a linear can get from the sensitivity split
ERROR_TOKENS = 1024  # calibration tokens for the skip-error estimates of the sensitivity split


@torch.library.custom_op("autolite::sparse_input_linear", mutates_args=())
def sparse_input_linear(x: torch.Tensor, weight_t: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x`` (rows, in) with entries of magnitude <= ``threshold`` zeroed, times ``weight_t`` (in, out),
    reading only the weight rows of the active inputs: an ``embedding_bag`` (sum, the inputs as per-sample
    weights) over the active row indices is exactly that gather-and-accumulate, in one fused multi-threaded
    kernel (FBGEMM's) that never copies the rows. Bags run in parallel, so one row's active inputs are split
    into one bag per thread and the partial sums added."""
    if x.shape[0] == 1:
        v = x[0]  # (in,)
        idx = (v.abs() > threshold).nonzero().squeeze(1)  # (k,) active inputs
        parts = torch.get_num_threads()
        offsets = torch.arange(parts) * (idx.shape[0] // parts)  # (parts,) one bag per thread
        y = F.embedding_bag(idx, weight_t, offsets, mode="sum", per_sample_weights=v[idx])  # (parts, out)
        return y.sum(0, keepdim=True)  # (1, out)
    keep = x.abs() > threshold  # (rows, in)
    counts = keep.sum(1)  # (rows,)
    offsets = counts.cumsum(0) - counts  # (rows,) one bag per row
    idx = keep.nonzero()[:, 1]  # (nnz,) row-major: the bags in order
    return F.embedding_bag(idx, weight_t, offsets, mode="sum", per_sample_weights=x[keep])  # (rows, out)


@sparse_input_linear.register_fake
def _(x: torch.Tensor, weight_t: torch.Tensor, threshold: float) -> torch.Tensor:
    return x.new_empty(x.shape[0], weight_t.shape[1])


class ActSparseLinear(nn.Module):
    """A linear whose decode-time calls skip the weight rows of small inputs; see the module docstring."""

    def __init__(self, in_features: int, out_features: int, bias: bool, threshold: float, max_rows: int = 8,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.threshold, self.max_rows, self.everywhere = float(threshold), max_rows, False
        self.register_buffer("weight_t", torch.zeros(in_features, out_features, dtype=dtype))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)

    @classmethod
    def from_float(cls, module: nn.Module, threshold: float, max_rows: int) -> "ActSparseLinear":
        """From an ``nn.Linear`` (weight (out, in)) or a GPT-2 ``Conv1D`` (weight (in, out))."""
        conv1d = is_conv1d(module)
        weight = module.weight.detach()
        weight_t = weight if conv1d else weight.t()
        layer = cls(weight_t.shape[0], weight_t.shape[1], module.bias is not None, threshold, max_rows, weight.dtype)
        layer.weight_t = weight_t.contiguous().clone()
        if module.bias is not None:
            layer.bias = module.bias.detach().clone()
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # (N, in)
        if rows.shape[0] <= self.max_rows:
            y = torch.ops.autolite.sparse_input_linear(rows, self.weight_t, self.threshold)  # (N, out)
        else:
            if self.everywhere:
                rows = rows * (rows.abs() > self.threshold)
            y = rows @ self.weight_t  # (N, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, threshold={self.threshold:.4g}"


@contextlib.contextmanager
def sparse_everywhere(model: nn.Module) -> Iterator[None]:
    """Apply the thresholds to every call (prefill too) while inside: how perplexity of decode is measured."""
    layers = [m for m in model.modules() if isinstance(m, ActSparseLinear)]
    for layer in layers:
        layer.everywhere = True
    try:
        yield
    finally:
        for layer in layers:
            layer.everywhere = False


@dataclasses.dataclass
class ActivationSparsity(PassConfig):
    """Skip the weight rows of small activations at decode (TEAL).

    ``sparsity``: the fraction of the block weights whose reads are skipped (0 < s < 1); ``allocation``:
    ``uniform`` skips that fraction of every linear's inputs, ``sensitivity`` splits it over the linears by
    their calibrated skip error (robust linears skip more). Thresholds are calibrated per linear on
    ``calib_tokens`` tokens of ``ctx.calib`` in windows of ``calib_seq``; ``max_rows``: calls with at most
    this many tokens run sparse. ``thresholds`` is filled in per linear (replayed on load).
    """

    name = "activation-sparsity"
    sparsity: float = 0.4
    max_rows: int = 8
    calib_tokens: int = 4096
    calib_seq: int = 128
    allocation: str = "uniform"
    thresholds: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0 < self.sparsity < 1:
            raise RecipeError(f"activation-sparsity sparsity must be in (0, 1), got {self.sparsity!r}")
        for field in ("max_rows", "calib_tokens", "calib_seq"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RecipeError(f"activation-sparsity {field} must be a positive integer, got {value!r}")
        if self.allocation not in ("uniform", "sensitivity"):
            raise RecipeError(f"activation-sparsity allocation must be 'uniform' or 'sensitivity', got {self.allocation!r}")
        if self.thresholds is not None and (not isinstance(self.thresholds, dict) or not all(
                isinstance(v, (int, float)) and v >= 0 for v in self.thresholds.values())):
            raise RecipeError("activation-sparsity thresholds must map layer names to numbers >= 0")


def target_linears(model: nn.Module, ctx: PassContext) -> dict[str, nn.Module]:
    """Every float linear (or GPT-2 Conv1D) inside the decoder blocks, by qualified name."""
    family = ctx.family
    if family is None or family.kind != "decoder":
        raise RecipeError("activation-sparsity is for decoders (it speeds up single-token decode steps)")
    blocks = {id(view.module) for view in family.layers(model)}
    names = {id(m): n for n, m in model.named_modules()}
    found = {}
    for block in (m for m in model.modules() if id(m) in blocks):
        for sub in block.modules():
            if isinstance(sub, nn.Linear) or is_conv1d(sub):
                found[names[id(sub)]] = sub
    if not found:
        raise RecipeError("activation-sparsity found no float linears in the decoder blocks (apply it before "
                          "quantization passes)")
    return found


def _calibrate(model: nn.Module, ctx: PassContext, linears: dict[str, nn.Module], config: "ActivationSparsity",
               make_hook: Callable[[str, nn.Module], Callable], tokens: int) -> None:
    """Run the calibration windows through the model with ``make_hook(name, module)`` as forward hooks."""
    handles = [m.register_forward_hook(make_hook(n, m)) for n, m in linears.items()]
    try:
        for window in calibration_windows(ctx.tokenizer, ctx.calib, config.calib_seq, tokens):
            model(input_ids=window)
    finally:
        for handle in handles:
            handle.remove()


def magnitude_samples(model: nn.Module, ctx: PassContext, linears: dict[str, nn.Module],
                      config: "ActivationSparsity") -> dict[str, torch.Tensor]:
    """Per linear, an even sample of its calibration input magnitudes (at most ``SAMPLE_PER_LAYER``)."""
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in linears}

    def make_hook(name: str, _: nn.Module) -> Callable:
        def record(_m: nn.Module, args: tuple, _out: torch.Tensor) -> None:
            flat = args[0].detach().reshape(-1).abs().float()
            parts[name].append(flat[::max(1, flat.numel() // SAMPLE_PER_CALL)])
        return record

    _calibrate(model, ctx, linears, config, make_hook, config.calib_tokens)
    samples = {}
    for name, chunks in parts.items():
        values = torch.cat(chunks)
        samples[name] = values[::max(1, values.numel() // SAMPLE_PER_LAYER)]  # an even spread over the windows
    return samples


def skip_errors(model: nn.Module, ctx: PassContext, linears: dict[str, nn.Module], config: "ActivationSparsity",
                levels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per linear, the mean over tokens of the relative output error ``|W (x masked)|^2 / |W x|^2`` of skipping
    the inputs below each of its threshold ``levels`` (G,), ``|W (x masked)|^2`` estimated as
    ``sum_j x_j^2 |W[:, j]|^2`` over the skipped inputs."""
    energy = {name: torch.zeros(len(level), dtype=torch.float64) for name, level in levels.items()}
    total = dict.fromkeys(levels, 0)  # tokens seen

    def make_hook(name: str, module: nn.Module) -> Callable:
        weight = module.weight.detach().float()
        column = weight.pow(2).sum(1) if is_conv1d(module) else weight.pow(2).sum(0)  # (in,)

        def record(_m: nn.Module, args: tuple, out: torch.Tensor) -> None:
            x = args[0].detach().reshape(-1, column.numel()).float()  # (T, in)
            y_energy = out.detach().reshape(x.shape[0], -1).double().pow(2).sum(1, keepdim=True)  # (T, 1)
            relative = (x.pow(2) * column).double() / y_energy.clamp_min(1e-30)  # (T, in) per token, so that
            # the few tokens with massive activations do not hide the error of all others
            bins = torch.bucketize(x.abs(), levels[name])  # (T, in): bin g holds levels[g-1] < |x| <= levels[g]
            per_bin = torch.bincount(bins.flatten(), weights=relative.flatten(), minlength=len(levels[name]) + 1)
            energy[name] += per_bin[:-1].cumsum(0)  # (G,) error of skipping the inputs at or below each level
            total[name] += x.shape[0]
        return record

    _calibrate(model, ctx, linears, config, make_hook, min(config.calib_tokens, ERROR_TOKENS))
    return {name: energy[name] / max(total[name], 1) for name in levels}


def allocate(errors: dict[str, torch.Tensor], sizes: dict[str, int], target: float) -> dict[str, float]:
    """Greedy split of the sparsity over the linears: repeatedly raise the one whose next ``GRID`` step adds the
    least relative output error per skipped weight, until ``target`` of all weights (by count) are skipped."""
    step = {name: -1 for name in errors}  # index into GRID; -1 = dense
    goal, skipped = target * sum(sizes.values()), 0.0
    heap = [(float(err[0]) / (sizes[name] * GRID[0]), name) for name, err in errors.items()]
    heapq.heapify(heap)
    while skipped < goal and heap:
        _, name = heapq.heappop(heap)
        g = step[name] = step[name] + 1
        skipped += sizes[name] * (GRID[g] - (GRID[g - 1] if g else 0.0))
        if g + 1 < len(GRID):
            cost = float(errors[name][g + 1] - errors[name][g]) / (sizes[name] * (GRID[g + 1] - GRID[g]))
            heapq.heappush(heap, (cost, name))
    return {name: GRID[g] if g >= 0 else 0.0 for name, g in step.items()}


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, ctx: PassContext, linears: dict[str, nn.Module],
                         config: "ActivationSparsity") -> dict[str, float]:
    """Per linear, the input magnitude to skip below: its own ``sparsity`` quantile (``uniform``), or the
    quantile of the share :func:`allocate` gives it (``sensitivity``) so that ``sparsity`` of all weights skip."""
    samples = magnitude_samples(model, ctx, linears, config)
    if config.allocation == "uniform":
        return {name: float(torch.quantile(values, config.sparsity)) for name, values in samples.items()}
    grid = torch.tensor(GRID)
    levels = {name: torch.quantile(values, grid) for name, values in samples.items()}  # (G,) per linear
    errors = skip_errors(model, ctx, linears, config, levels)
    shares = allocate(errors, {name: m.weight.numel() for name, m in linears.items()}, config.sparsity)
    log.info("activation-sparsity shares: %s", {name: round(s, 2) for name, s in shares.items()})
    return {name: float(torch.quantile(samples[name], shares[name])) if shares[name] > 0 else 0.0 for name in linears}


def _swap(model: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, layer)


def apply_activation_sparsity(model: nn.Module, config: ActivationSparsity, ctx: PassContext) -> nn.Module:
    linears = target_linears(model, ctx)
    thresholds = config.thresholds or calibrate_thresholds(model, ctx, linears, config)
    for name, module in linears.items():
        _swap(model, name, ActSparseLinear.from_float(module, thresholds[name], config.max_rows))
    ctx.note(f"activation-sparsity: {len(linears)} linears skip inputs below per-layer thresholds "
             f"(target {config.sparsity:.0%}) at decode (<= {config.max_rows} tokens per call); prefill dense")
    return model, dataclasses.replace(config, thresholds=thresholds)  # recorded: load replays these


def restore_activation_sparsity(model: nn.Module, config: ActivationSparsity, ctx: PassContext) -> nn.Module:
    """Swap in empty sparse layers with the recorded thresholds (weights come from the state dict)."""
    for name, threshold in (config.thresholds or {}).items():
        module = model.get_submodule(name)
        in_f, out_f = (module.weight.shape if is_conv1d(module) else module.weight.shape[::-1])
        _swap(model, name, ActSparseLinear(in_f, out_f, module.bias is not None, threshold, config.max_rows,
                                           module.weight.dtype))
    return model


register_pass(ActivationSparsity, restore=restore_activation_sparsity)(apply_activation_sparsity)
