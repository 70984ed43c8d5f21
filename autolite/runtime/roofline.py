"""Roofline report: achieved GFLOP/s and weight GB/s per linear-layer kind against measured machine peaks.

Peaks are measured, not looked up: FP32 GEMM GFLOP/s (a square matmul) and memory bandwidth (a large
copy). Each linear layer is timed with forward hooks during real forwards; FLOPs are ``2 x tokens x in x
out`` and bytes are the layer's stored weights (what a memory-bound decode step must stream). Everything
that is not a linear layer (attention core, norms, activations, embeddings) is one "other" row.
"""
from __future__ import annotations

import collections
import time
from typing import Any

import torch
from torch import nn

from autolite.quant import common


def measure_peaks(size: int = 1024, copy_mb: int = 256, repeats: int = 3) -> dict[str, float]:
    """Best-of-``repeats`` FP32 matmul GFLOP/s and copy bandwidth GB/s on this machine."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    src = torch.empty(copy_mb * 2**20 // 4)
    dst = torch.empty_like(src)
    gemm, copy = float("inf"), float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        torch.mm(a, b)
        gemm = min(gemm, time.perf_counter() - start)
        start = time.perf_counter()
        dst.copy_(src)
        copy = min(copy, time.perf_counter() - start)
    return {"gemm_gflops": 2 * size**3 / gemm / 1e9, "bandwidth_gbs": 2 * src.numel() * 4 / copy / 1e9}


def layer_kind(module: nn.Module) -> str | None:
    """A row label for a linear-like module, None for anything else."""
    name = type(module).__name__
    if common.is_linear(module):
        return f"linear {str(module.weight.dtype).replace('torch.', '')}"
    if name == "DynamicInt8Linear":
        return f"int8-dynamic ({module.kernel_name})"
    if name == "StaticInt8Linear":
        return "int8-static (_int_mm)"
    if name.startswith("WeightOnlyInt"):
        return f"weight-only int{8 if 'Int8' in name else 4}"
    return None


def _weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for n, t in module.state_dict().items() if n != "bias")


def _flops(module: nn.Module, x: torch.Tensor) -> float:
    out_features = module.out_features if hasattr(module, "out_features") else common.linear_shape(module)[1]
    return 2.0 * x.numel() * out_features  # 2 x tokens x in x out


def profile(model: nn.Module, run: Any, runs: int = 3) -> dict[str, Any]:
    """Time ``run()`` (one forward) ``runs`` times with per-linear hooks; rows per layer kind."""
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0, 0.0])  # seconds, flops, bytes
    starts: dict[int, float] = {}
    hooks = []
    for module in model.modules():
        kind = layer_kind(module)
        if kind is None:
            continue
        weight_bytes = _weight_bytes(module)

        def pre(mod, args):
            starts[id(mod)] = time.perf_counter()

        def post(mod, args, out, _kind=kind, _bytes=weight_bytes):
            row = totals[_kind]
            row[0] += time.perf_counter() - starts.pop(id(mod))
            row[1] += _flops(mod, args[0])
            row[2] += _bytes
        hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        run()  # warm-up
        totals.clear()
        start = time.perf_counter()
        for _ in range(runs):
            run()
        total = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    return {"total_s": total / runs, "rows": {k: [v / runs for v in row] for k, row in totals.items()}}


def roofline_rows(result: dict[str, Any], peaks: dict[str, float]) -> list[tuple[str, ...]]:
    """Table rows: kind, ms per forward, share, GFLOP/s, % of GEMM peak, weight GB/s, % of bandwidth."""
    rows = []
    linear_s = 0.0
    for kind, (seconds, flops, nbytes) in sorted(result["rows"].items()):
        linear_s += seconds
        gflops, gbs = flops / seconds / 1e9, nbytes / seconds / 1e9
        rows.append((kind, f"{seconds * 1e3:.1f}", f"{seconds / result['total_s']:.0%}", f"{gflops:.1f}",
                     f"{gflops / peaks['gemm_gflops']:.0%}", f"{gbs:.2f}", f"{gbs / peaks['bandwidth_gbs']:.0%}"))
    other = max(result["total_s"] - linear_s, 0.0)
    rows.append(("other (attention core, norms, embeddings)", f"{other * 1e3:.1f}",
                 f"{other / result['total_s']:.0%}", "-", "-", "-", "-"))
    return rows
