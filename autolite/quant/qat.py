"""Quantization-aware training: prepare a model (swap linears for ``FakeQuantLinear``) and convert it back.

* ``prepare_qat`` swaps a model's transformer linears for ``FakeQuantLinear``; ``convert_qat`` turns them
  into the engine's packed modules (or plain float modules holding the quantized weights) and records
  them in the model's recipe so ``autolite.load`` rebuilds them.
* ``prepare_qat_from_packed`` starts QAT from an already quantized model (e.g. GPTQ): each packed INT4
  layer becomes a FakeQuantLinear whose latent weight is the dequantized codes and whose LSQ scales and
  (fixed) zeros are the stored ones, so the fake-quant model at step 0 is the packed model.

The training driver is ``autolite.quant.qat_train``.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from autolite.config import Recipe
from autolite.errors import RecipeError
from autolite.passes import applied_recipe, record_recipe
from autolite.quant.common import set_module, transformer_linears
from autolite.quant.fakequant import FakeQuantLinear
from autolite.quant.formats import GROUP_SIZES, SCALE_DTYPE, pack_int4
from autolite.quant.layers import WeightOnlyInt4Linear, WeightOnlyInt8Linear
from autolite.quant.mixed import MixedPrecision, packed_layers
from autolite.quant.weight_only import WeightOnly

log = logging.getLogger(__name__)


def prepare_qat(model: nn.Module, family, bits: int | dict[str, int], group_size: int | None = 64,
                symmetric: bool = True, mode: str = "minmax", act_bits: int | None = None,
                init: str = "minmax") -> nn.Module:
    """Swap the transformer linears of ``model`` (in place) for FakeQuantLinear; ``bits`` maps fqn -> bits
    (linears missing from the map stay float) or is one width for all."""
    linears = transformer_linears(model, family)
    plan = {name: bits for name in linears} if isinstance(bits, int) else dict(bits)
    unknown = sorted(set(plan) - set(linears))
    if unknown:
        raise RecipeError(f"bits map names unknown layers {unknown[:3]}; use names from `autolite sensitivity`")
    for name, width in plan.items():
        if width < 16:
            set_module(model, name, FakeQuantLinear(linears[name], width, group_size, symmetric, mode, act_bits,
                                                     init))
    log.info("prepared %d linears for QAT", sum(1 for w in plan.values() if w < 16))
    return model


def prepare_qat_from_packed(model: nn.Module, mode: str = "lsq") -> nn.Module:
    """Swap every packed INT4 layer of ``model`` (in place) for :meth:`FakeQuantLinear.from_packed`."""
    packed = [(n, m) for n, m in model.named_modules() if isinstance(m, WeightOnlyInt4Linear)]
    if not packed:
        raise RecipeError("QAT from a quantized model needs packed INT4 layers (weight-only 4-bit); found none")
    for name, layer in packed:
        set_module(model, name, FakeQuantLinear.from_packed(layer, mode))
    log.info("prepared %d packed INT4 linears for QAT", len(packed))
    return model


@torch.no_grad()
def convert_qat(model: nn.Module, engine: bool = True) -> nn.Module:
    """Replace every FakeQuantLinear by a real module holding its quantized weights.

    With ``engine`` (default), 4-bit layers (group 32..256) become the engine's packed
    ``WeightOnlyInt4Linear`` and per-channel symmetric 8-bit layers ``WeightOnlyInt8Linear``, and the model's
    recipe records them so ``autolite.load`` rebuilds them. Other widths (and ``engine=False``) become a
    plain float module whose weight is the dequantized quantized weight. Either way the outputs equal the
    fake-quant model's for calls above the kernels' row threshold (the packed kernels take BF16 activations).
    """
    real: dict[tuple[int, int | None], list[str]] = {}
    known = _rebuilt_on_load(model)  # before the swap: the recipe's layer names resolve on float-like modules
    for name, module in list(model.named_modules()):
        if not isinstance(module, FakeQuantLinear):
            continue
        module.eval()
        layer = _engine_layer(module) if engine else None
        if layer is not None:
            key = (module.weight_quant.bits, layer.group if module.weight_quant.bits == 4 else None)
            real.setdefault(key, []).append(name)
        else:
            layer = _float_layer(module)
        set_module(model, name, layer.to(module.weight.device))
    if real:
        _record_engine_layers(model, real, known)
    return model


def _float_layer(module: FakeQuantLinear) -> nn.Module:
    deq = module.weight_quant(module.weight)
    if module.from_conv1d:  # GPT-2 keeps its (in, out) layout so transformers reloads it
        layer, deq = Conv1D(module.out_features, module.in_features), deq.t()
    else:
        layer = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    layer.weight.copy_(deq)
    if module.bias is not None:
        layer.bias.copy_(module.bias)
    return layer


def _engine_layer(module: FakeQuantLinear) -> nn.Module | None:
    """The engine's packed module for this layer's codes, or None when the engine cannot hold them."""
    quant = module.weight_quant
    q, scale, zero = quant.codes(module.weight)
    bias = module.bias is not None
    if quant.bits == 4 and quant.group in GROUP_SIZES:
        layer = WeightOnlyInt4Linear(module.in_features, module.out_features, bias, quant.group)
        offset = 8 if quant.symmetric else 0  # engine codes are unsigned: w = (q - zero) * scale
        layer.weight_packed = pack_int4((q + offset).to(torch.uint8))
        layer.weight_zero = (zero + offset).to(torch.uint8)
    elif quant.bits == 8 and quant.symmetric and quant.group == module.in_features and int(q.min()) >= -127:
        layer = WeightOnlyInt8Linear(module.in_features, module.out_features, bias)
        layer.weight_int8 = q.to(torch.int8)
        scale = scale[:, 0]
    else:
        return None
    layer.weight_scale = scale.to(SCALE_DTYPE)
    if bias:
        layer.bias = module.bias.detach().float().clone()
    return layer


def _rebuilt_on_load(model: nn.Module) -> set[str]:
    """Linears a pass already recorded in the model's recipe rebuilds as packed modules on load."""
    known: set[str] = set()
    for config in applied_recipe(model).passes:
        if isinstance(config, WeightOnly):
            known |= set(config.layers or [])
        elif isinstance(config, MixedPrecision):  # QAT from a mixed model keeps each layer's group
            known |= packed_layers(model, config)
    return known


def _record_engine_layers(model: nn.Module, real: dict[tuple[int, int | None], list[str]], known: set[str]) -> None:
    """Record one ``weight-only`` pass per (bits, group) so that a saved model reloads its packed layers
    (``known`` layers, which a recorded ``weight-only`` or ``mixed_precision`` pass already rebuilds, as after
    QAT from GPTQ or from a mixed model, are not recorded twice)."""
    real = {key: [n for n in names if n not in known] for key, names in real.items()}
    real = {key: names for key, names in real.items() if names}
    if not real:
        return
    configs = [WeightOnly(bits=bits, group_size=group, layers=sorted(names)) for (bits, group), names in real.items()]
    record_recipe(model, Recipe(passes=configs, name="qat"))


@torch.no_grad()
def qat_codes(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """fqn -> (integer codes, scale, zero) of every FakeQuantLinear, for packing into real kernels."""
    return {name: m.weight_quant.codes(m.weight) for name, m in model.named_modules()
            if isinstance(m, FakeQuantLinear)}
