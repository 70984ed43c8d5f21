"""What the report shows besides the trials: per-layer sensitivity and latency per layer kind."""
from __future__ import annotations

from typing import Any

import torch

from autolite.data import TextData
from autolite.eval.bench import forward_fn
from autolite.runtime.roofline import profile
from autolite.search.data import accuracy


def layer_sensitivity(model: torch.nn.Module, tokenizer: Any, family: Any, data: TextData, max_length: int,
                      reference: float) -> dict[str, Any]:
    """Accuracy drop (points) on ``data`` when one layer's attention or FFN output is zeroed (its sub-layer
    skipped; the residual path stays), for every layer: rows ``attention``/``ffn``, one column per layer."""
    views = family.layers(model)
    rows: dict[str, list[float]] = {"attention": [], "ffn": []}
    for view in views:
        for kind, module in (("attention", view.attention.o), ("ffn", view.ffn.down)):
            handle = module.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
            try:
                rows[kind].append(round(reference - accuracy(model, tokenizer, data, max_length), 2))
            finally:
                handle.remove()
    return {"layers": [f"{v.stack}.{v.index}" for v in views], "rows": rows, "rows_scored": len(data),
            "reference_acc": reference}


def layer_latency(models: dict[str, torch.nn.Module], family: Any, inputs: dict[str, torch.Tensor],
                  runs: int = 2) -> dict[str, Any]:
    """Milliseconds per forward by layer kind (linear FP32/INT8/... from forward hooks; the rest is attention
    core, norms, activations, glue). A model whose forward runs in another runtime (ONNX Runtime) is only timed
    whole."""
    table: dict[str, dict[str, float]] = {}
    for name, model in models.items():
        result = profile(model, forward_fn(model, family, inputs), runs=runs)
        rows = {kind: 1000.0 * row[0] for kind, row in result["rows"].items()}
        total = 1000.0 * result["total_s"]
        rows["other (attention core, norms, activations)" if rows else "whole forward (not hookable)"] = max(
            total - sum(rows.values()), 0.0)
        table[name] = {k: round(v, 2) for k, v in rows.items()}
    return table
