"""Shared pieces of the quantization passes: which linears to quantize, swapping modules, timing kernels.

Every quantized layer replaces an ``nn.Linear`` or a GPT-2 ``Conv1D`` (weight stored ``[in, out]``,
transposed here to the ``[out, in]`` layout of ``nn.Linear``).
"""
from __future__ import annotations

import re
import statistics
import time
from typing import Any, Callable, Iterator

import torch
from torch import nn

from autolite.arch import is_conv1d
from autolite.errors import RecipeError

# Output heads kept in float unless asked: their error goes straight into logits / class scores.
HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls")


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as ``(out_features, in_features)`` float32 (Conv1D transposed)."""
    weight = module.weight.detach()
    return (weight.t() if is_conv1d(module) else weight).float().contiguous()


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The live ``(out, in)`` weight of a Linear, or of a GPT-2 Conv1D (stored ``(in, out)``)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def set_weight_matrix(module: nn.Module, value: torch.Tensor) -> None:
    """Copy an ``(out, in)`` matrix into the module's weight (transposed for Conv1D)."""
    with torch.no_grad():
        module.weight.copy_(value.t() if is_conv1d(module) else value)


def linear_bias(module: nn.Module) -> torch.Tensor | None:
    bias = getattr(module, "bias", None)
    return None if bias is None else bias.detach().float().clone()


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)``."""
    if is_conv1d(module):
        return module.weight.shape[0], module.weight.shape[1]
    return module.in_features, module.out_features


def shape_key(module: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, has_bias)``: layers with equal keys time alike (kernel choice)."""
    return (*linear_shape(module), getattr(module, "bias", None) is not None)


def head_names(model: nn.Module) -> set[str]:
    """Fully qualified names of output heads (the output embedding and known classifier names)."""
    names = set()
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for name, module in model.named_modules():
        if module is out_emb and out_emb is not None:
            names.add(name)
        if name and name.split(".")[0] in HEAD_NAMES:
            names.add(name)
    return names


def float_weight_readers(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of modules that read their linears' float weights directly (``reads_float_weights``, e.g.
    runtime head selection slicing q/k/v rows): the linears below them stay float so those modules keep working."""
    return tuple(f"{name}." for name, module in model.named_modules() if getattr(module, "reads_float_weights", False))


def target_linears(model: nn.Module, *, include_head: bool = False, skip: list[str] | None = None,
                   layers: list[str] | None = None) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(fqn, module)`` of every linear to quantize.

    ``layers`` (when given) is the exact list to use (a saved model's record); otherwise every linear
    except output heads (unless ``include_head``) and names matching a ``skip`` regex.
    """
    patterns = [re.compile(p) for p in (skip or [])]
    heads = set() if include_head else head_names(model)
    wanted = set(layers) if layers is not None else None
    float_only = float_weight_readers(model)
    for name, module in list(model.named_modules()):
        if not is_linear(module) or name.startswith(float_only):
            continue
        if wanted is not None:
            if name in wanted:
                yield name, module
            continue
        if name in heads or any(p.search(name) for p in patterns):
            continue
        yield name, module


def transformer_linears(model: nn.Module, family: Any) -> dict[str, nn.Module]:
    """Fully qualified name -> linear (q, k, v, o / qkv, up, gate, down / gate_up) of every transformer layer."""
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, nn.Module] = {}
    for view in family.layers(model):
        blocks = [view.attention] + ([view.cross_attention] if view.cross_attention else [])
        modules = [getattr(b, k) for b in blocks for k in ("q", "k", "v", "qkv", "o")]
        modules += [getattr(view.ffn, k) for k in ("gate_up", "gate", "up", "down")]
        for module in modules:
            if module is not None and getattr(module, "weight", None) is not None and id(module) in names:
                found[names[id(module)]] = module
    return found


def check_layers_exist(model: nn.Module, layers: list[str]) -> None:
    """Raise when a recorded layer name is not a linear of ``model`` (a recipe for another model)."""
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules or not is_linear(modules[n])]
    if missing:
        raise RecipeError(f"recipe names layers this model lacks ({missing[:3]}); "
                          "the recipe was recorded on a different model")


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule called ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def restore_linears(model: nn.Module, layers: list[str] | None,
                    build: Callable[[str, int, int, bool], nn.Module]) -> nn.Module:
    """Swap each recorded linear for ``build(name, in_features, out_features, has_bias)``.

    The restore hook of the quantization passes: the new modules hold empty, correctly shaped tensors
    whose contents come from the state dict loaded next.
    """
    check_layers_exist(model, layers or [])
    for name in layers or []:
        module = model.get_submodule(name)
        in_features, out_features = linear_shape(module)
        set_module(model, name, build(name, in_features, out_features, getattr(module, "bias", None) is not None))
    return model


def validate_skip(skip: list[str] | None) -> None:
    for pattern in skip or []:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RecipeError(f"skip pattern '{pattern}' is not a valid regex: {exc}") from exc


def time_ms(fn: Callable[[], object], runs: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` in milliseconds (the machine may be shared: take the median)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def flatten_rows(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(..., K)`` -> contiguous ``(M, K)`` and the leading shape to restore."""
    return x.reshape(-1, x.shape[-1]).contiguous(), tuple(x.shape[:-1])


def realign_buffers(module: nn.Module, names: tuple[str, ...], alignment: int = 64) -> None:
    """Copy buffers that are not ``alignment``-byte aligned (tensors read from a safetensors file can sit at
    any offset; the CPU low-bit kernels use aligned vector loads and crash on them)."""
    for name in names:
        tensor = getattr(module, name, None)
        if tensor is not None and tensor.device.type == "cpu" and tensor.data_ptr() % alignment:
            setattr(module, name, tensor.clone())


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    reference, approx = reference.detach().float(), approx.detach().float()
    noise = (reference - approx).pow(2).mean().clamp(min=1e-30)
    return float(10 * torch.log10(reference.pow(2).mean() / noise))


def from_float_linear(cls: type, module: nn.Module, quantize: Callable, *args: Any) -> nn.Module:
    """Build ``cls(in, out, has_bias, *args)`` from a float linear/Conv1D, its weight quantized per row by
    ``quantize(weight) -> (weight_int8, weight_scale)`` (the INT8 layers' shared ``from_float``)."""
    weight, bias = linear_weight(module), linear_bias(module)
    layer = cls(weight.shape[1], weight.shape[0], bias is not None, *args)
    layer.weight_int8, layer.weight_scale = quantize(weight)
    if bias is not None:
        layer.bias = bias
    return layer
