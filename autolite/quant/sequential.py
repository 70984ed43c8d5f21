"""Layer-by-layer calibration: quantize block i on the outputs of the already-quantized blocks < i.

The calibration texts are tokenized, concatenated and cut into windows of ``seq_len`` tokens (no
padding, so every row is a real token). The inputs of the first transformer block are captured once;
then for each block: hooks accumulate each target linear's input Hessian over all windows, the block's
linears are quantized by ``quantize(name, module, hessian)``, and the block is run again so its
(quantized) outputs become the next block's inputs. Linears fed the same tensor (q/k/v, gate/up)
share one Hessian.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from autolite.data import load_texts
from autolite.errors import DataError, NumericsError
from autolite.quant.common import set_module
from autolite.quant.gptq import HessianAccumulator

log = logging.getLogger(__name__)
Quantizer = Callable[[dict[str, nn.Module], torch.Tensor, str], dict[str, nn.Module]]


class _Captured(Exception):
    """Raised by the first block's hook once its inputs are recorded (the rest of the forward is skipped)."""


def calibration_windows(tokenizer: Any, texts: list[str] | None, seq_len: int, max_tokens: int) -> list[torch.Tensor]:
    """Token windows ``(1, seq_len)`` cut from the concatenated calibration texts (embedded corpus when None)."""
    if texts is None:
        texts = load_texts(None, split="calib").texts
    if tokenizer is None:
        raise DataError("calibrated quantization needs the tokenizer: pass tokenizer= to compress()")
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) >= max_tokens:
            break
    ids = ids[:max_tokens]
    if not ids:
        raise DataError("calibrated quantization got no calibration text (empty calib list or only empty "
                        "strings); pass calib=[...] or --data FILE, or use method: rtn")
    return [torch.tensor(ids[i:i + seq_len]).unsqueeze(0) for i in range(0, len(ids), seq_len)]


def block_modules(model: nn.Module, family: Any) -> list[tuple[str, nn.Module]] | None:
    """``(fqn, module)`` of the transformer blocks in execution order; None for multi-stack models."""
    views = family.layers(model) if family is not None else []
    if not views or len({v.stack for v in views}) != 1:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[id(v.module)], v.module) for v in views]


def capture_inputs(model: nn.Module, first: nn.Module, windows: list[torch.Tensor], kind: str, batch: int
                   ) -> list[tuple[tuple, dict]]:
    """The ``(args, kwargs)`` the first block receives for each batch of windows."""
    captured: list[tuple[tuple, dict]] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append((args, kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for inputs in window_batches(windows, kind, batch):
                try:
                    model(**inputs)
                except _Captured:
                    pass
    finally:
        handle.remove()
    return captured


def window_batches(windows: list[torch.Tensor], kind: str, batch: int) -> list[dict[str, torch.Tensor]]:
    """The model's keyword arguments for each batch of ``batch`` same-length windows."""
    extra = {"use_cache": False} if kind == "decoder" else {}
    calls = []
    for start in range(0, len(windows), batch):
        ids = torch.cat(_same_length(windows[start:start + batch]))
        calls.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), **extra})
    return calls


def _same_length(windows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Drop a trailing shorter window from a batch (it gets its own batch only if it is alone)."""
    length = windows[0].shape[1]
    return [w for w in windows if w.shape[1] == length]


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def collect_hessians(block: nn.Module, targets: dict[str, nn.Module], inputs: list[tuple[tuple, dict]]
                      ) -> tuple[dict[str, HessianAccumulator], dict[str, list[str]]]:
    """Hessian per distinct input tensor; ``groups`` maps the first linear of each to all linears it feeds."""
    hessians: dict[str, HessianAccumulator] = {}
    owner_of: dict[str, str] = {}
    seen: dict[int, tuple[torch.Tensor, str]] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            if name not in owner_of:
                first = seen.get(id(x))
                owner_of[name] = first[1] if first is not None and first[0] is x else name
                seen[id(x)] = (x, owner_of[name])
            if owner_of[name] == name:
                hessians.setdefault(name, HessianAccumulator(x.shape[-1], name)).add(x)
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in targets.items()]
    try:
        with torch.no_grad():
            for args, kwargs in inputs:
                block(*args, **kwargs)
                seen.clear()
    finally:
        for handle in handles:
            handle.remove()
    groups: dict[str, list[str]] = {}
    for name in targets:
        if name not in owner_of:
            raise NumericsError(f"GPTQ calibration never reached layer '{name}'")
        groups.setdefault(owner_of[name], []).append(name)
    return hessians, groups


def _run_block(block: nn.Module, inputs: list[tuple[tuple, dict]], name: str) -> list[tuple[tuple, dict]]:
    out = []
    with torch.no_grad():
        for args, kwargs in inputs:
            result = block(*args, **kwargs)
            hidden = result[0] if isinstance(result, (tuple, list)) else result
            if not torch.isfinite(hidden).all():
                raise NumericsError(f"calibration produced NaN/inf at the output of block '{name}' after "
                                    "quantization; use method: rtn or check the model's weights")
            out.append(_with_hidden(args, kwargs, hidden))
    return out


def sequential_quantize(model: nn.Module, family: Any, tokenizer: Any, texts: list[str] | None,
                        targets: dict[str, nn.Module], quantize: Quantizer, *, seq_len: int = 128,
                        max_tokens: int = 8192, batch: int = 64, label: str = "GPTQ") -> set[str]:
    """Quantize every target linear inside a transformer block, block by block (see module docstring).

    ``quantize(linears, hessian, name)`` returns the replacement modules of linears sharing an input.
    ``batch`` windows run per block call (large: each quantized layer dequantizes once per call).
    Returns the names done; targets outside the blocks (or in multi-stack models) are left to the caller.
    """
    blocks = block_modules(model, family)
    if blocks is None:
        return set()
    windows = calibration_windows(tokenizer, texts, seq_len, max_tokens)
    inputs = capture_inputs(model, blocks[0][1], windows, getattr(family, "kind", "decoder"), batch)
    done: set[str] = set()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"{label} on {sum(w.numel() for w in windows)} tokens", total=len(blocks),
                                 status="")
        for block_name, block in blocks:
            mine = {n: m for n, m in targets.items() if n.startswith(block_name + ".")}
            progress.update(task, status=f"{block_name}: hessians of {len(mine)} linears")
            if mine:
                hessians, groups = collect_hessians(block, mine, inputs)
                for owner, names in groups.items():
                    short = ", ".join(n.rsplit(".", 1)[-1] for n in names)
                    progress.update(task, status=f"{block_name}: quantizing {short}")
                    new = quantize({n: mine[n] for n in names}, hessians[owner].hessian(), owner)
                    for name, module in new.items():
                        set_module(model, name, module)
                    done.update(names)
            inputs = _run_block(block, inputs, block_name)
            progress.advance(task)
    log.info("%s: %d linears quantized block by block on %d windows", label, len(done), len(windows))
    return done
