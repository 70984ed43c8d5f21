"""Roofline report: achieved GFLOP/s and weight GB/s per linear-layer kind against measured machine peaks.

Peaks are measured, not looked up: FP32 GEMM GFLOP/s, INT8 GEMM GOP/s (``_int_mm`` and the quantized
engines' dynamic linear: VNNI/AMX where present) and memory bandwidth (a large
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
from autolite.runtime.hardware import native_dtypes


GEMM_SHAPES = ((1024, 1024, 1024), (2048, 768, 3072))  # (M, K, N): square, and a BERT-base FFN GEMM


def _best_seconds(fn: Any, repeats: int) -> float:
    fn()  # warm-up (weight packing, page faults)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _int8_gemms(m: int, k: int, n: int) -> dict[str, Any]:
    """INT8 GEMM callables of this torch: ``_int_mm`` (s8s8->s32) and quantized linear per engine (VNNI/AMX)."""
    import warnings

    fns: dict[str, Any] = {}
    a, b = torch.randint(-127, 127, (m, k), dtype=torch.int8), torch.randint(-127, 127, (n, k), dtype=torch.int8)
    if hasattr(torch, "_int_mm"):
        fns["int_mm"] = lambda: torch._int_mm(a, b.t())
    x = torch.randn(m, k)
    for engine in ("onednn", "x86", "fbgemm"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        previous = torch.backends.quantized.engine
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.backends.quantized.engine = engine
                qweight = torch.quantize_per_tensor(torch.randn(n, k), 0.01, 0, torch.qint8)
                packed = torch.ops.quantized.linear_prepack(qweight, None)
        finally:
            torch.backends.quantized.engine = previous
        fns[engine] = lambda p=packed: torch.ops.quantized.linear_dynamic(x, p, False)
    return fns


def measure_peaks(size: int = 1024, copy_mb: int = 256, repeats: int = 3) -> dict[str, Any]:
    """Best-of-``repeats`` GEMM throughput (FP32 GFLOP/s, INT8 GOP/s) and copy bandwidth GB/s, measured.

    FP32: ``torch.mm``; INT8: the fastest of ``torch._int_mm`` and each quantized engine's dynamic linear
    (which also quantizes its input, as a real INT8 layer must), on :data:`GEMM_SHAPES`; BF16 (``torch.mm``)
    only where the CPU computes BF16 natively. ``int8_kernels`` gives the best GOP/s per INT8 kernel.
    """
    bf16_native = "bf16" in native_dtypes(torch.device("cpu"))
    fp32, bf16, int8 = 0.0, 0.0, {}
    for m, k, n in ((size, size, size), *(GEMM_SHAPES[1:] if size >= 1024 else ())):
        ops = 2.0 * m * k * n
        a, b = torch.randn(m, k), torch.randn(k, n)
        fp32 = max(fp32, ops / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9)
        if bf16_native:
            a16, b16 = a.bfloat16(), b.bfloat16()
            bf16 = max(bf16, ops / _best_seconds(lambda: torch.mm(a16, b16), repeats) / 1e9)
        for name, fn in _int8_gemms(m, k, n).items():
            int8[name] = max(int8.get(name, 0.0), ops / _best_seconds(fn, repeats) / 1e9)
    src = torch.empty(copy_mb * 2**20 // 4)
    dst = torch.empty_like(src)
    copy = _best_seconds(lambda: dst.copy_(src), repeats)
    best = max(int8.values(), default=0.0)
    return {"gemm_gflops": fp32, "bf16_gemm_gflops": bf16 or None, "int8_gemm_gops": best,
            "int8_kernels": {k: round(v, 1) for k, v in int8.items()},
            "int8_over_fp32": best / fp32, "bandwidth_gbs": 2 * src.numel() * 4 / copy / 1e9}


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


def _peak_for(kind: str, peaks: dict[str, Any]) -> float:
    return (peaks.get("int8_gemm_gops") or peaks["gemm_gflops"]) if "int8" in kind else peaks["gemm_gflops"]


def dense_floor(result: dict[str, Any], peaks: dict[str, Any], model: nn.Module | None = None,
                tokens: int = 0) -> dict[str, float]:
    """Lower bounds on a forward: every linear FLOP at the FP32 / INT8 GEMM peak, nothing else costing time.

    FLOPs come from the profiled linear layers, or (when no torch linear ran, e.g. an ONNX Runtime model)
    from ``2 x tokens x in x out`` over the model's linear modules. ``fp32_eager_ms / int8_floor_ms`` bounds
    any dense INT8 engine's speedup on this machine.
    """
    flops = sum(row[1] for row in result["rows"].values())
    if not flops and model is not None:
        flops = sum(2.0 * tokens * common.linear_shape(m)[0] * common.linear_shape(m)[1]
                    for m in model.modules() if layer_kind(m) is not None)
    if not flops:
        return {}
    return {"linear_gflop": flops / 1e9, "fp32_floor_ms": flops / peaks["gemm_gflops"] / 1e6,
            "int8_floor_ms": flops / peaks["int8_gemm_gops"] / 1e6 if peaks.get("int8_gemm_gops") else 0.0}


def roofline_rows(result: dict[str, Any], peaks: dict[str, Any]) -> list[tuple[str, ...]]:
    """Table rows: kind, ms per forward, share, GFLOP/s, % of its GEMM peak (INT8 rows: INT8 peak), weight
    GB/s, % of bandwidth."""
    rows = []
    linear_s = 0.0
    for kind, (seconds, flops, nbytes) in sorted(result["rows"].items()):
        linear_s += seconds
        gflops, gbs = flops / seconds / 1e9, nbytes / seconds / 1e9
        rows.append((kind, f"{seconds * 1e3:.1f}", f"{seconds / result['total_s']:.0%}", f"{gflops:.1f}",
                     f"{gflops / _peak_for(kind, peaks):.0%}", f"{gbs:.2f}", f"{gbs / peaks['bandwidth_gbs']:.0%}"))
    other = max(result["total_s"] - linear_s, 0.0)
    rows.append(("other (attention core, norms, embeddings)", f"{other * 1e3:.1f}",
                 f"{other / result['total_s']:.0%}", "-", "-", "-", "-"))
    return rows


def floor_line(floor: dict[str, float], eager_ms: float | None = None) -> str:
    """One sentence stating the dense floors (and, given the FP32 eager time, the speedups they bound)."""
    if not floor:
        return "dense floor: no linear layers found"
    text = (f"dense floor: {floor['linear_gflop']:.0f} GFLOP of linears take >= {floor['fp32_floor_ms']:.1f} ms "
            f"at the FP32 GEMM peak, >= {floor['int8_floor_ms']:.1f} ms at the INT8 GEMM peak")
    if eager_ms and floor.get("int8_floor_ms"):
        text += (f"; FP32 eager ({eager_ms:.1f} ms) is {eager_ms / floor['fp32_floor_ms']:.2f}x the FP32 floor "
                 f"and {eager_ms / floor['int8_floor_ms']:.2f}x the INT8 floor (the most any dense INT8 engine "
                 "can gain here)")
    return text
