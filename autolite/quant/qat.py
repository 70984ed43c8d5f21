"""Fake quantization for sensitivity analysis and quantization-aware training (QAT).

* ``fake_quantize_weight``: group-wise (or per-channel) symmetric/asymmetric quantize -> dequantize of a
  weight matrix ``(out, in)``; symmetric uses ``scale = max|w| / (2^(b-1) - 1)``,
  ``q = clamp(round(w/s), -2^(b-1), 2^(b-1) - 1)``; scales are rounded to BF16 as the engine stores them.
* ``FakeQuantLinear``: a Linear whose weight (and optionally its input activations, per token) pass through
  fake quantization with a straight-through estimator (STE). Weight ranges are recomputed each forward
  ("minmax"), tracked by an exponential moving average ("ema"), or learned (LSQ, "lsq").
* ``prepare_qat`` swaps a model's transformer linears for ``FakeQuantLinear``; ``convert_qat`` turns them
  back into plain modules holding the quantized weights (see :func:`convert_qat`).
* ``prepare_qat_from_packed`` starts QAT from an already quantized model (e.g. GPTQ): each packed INT4
  layer becomes a FakeQuantLinear whose latent weight is the dequantized codes and whose LSQ scales and
  (fixed) zeros are the stored ones, so the fake-quant model at step 0 is the packed model.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from autolite.errors import RecipeError
from autolite.quant.common import set_module as _set_module

log = logging.getLogger(__name__)
SCALE_DTYPE = torch.bfloat16  # scales are stored in BF16 by the engine's weight-only modules
WEIGHT_MODES = ("minmax", "ema", "lsq")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def effective_group(in_features: int, group_size: int | None) -> int:
    """The group size used for a row of ``in_features``: per-channel when None/0 or it does not divide."""
    if not group_size or group_size >= in_features or in_features % group_size:
        return in_features
    return group_size


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def group_params(w: torch.Tensor, bits: int, group: int, symmetric: bool,
                 lo: torch.Tensor | None = None, hi: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per group, ``(out, in/group)``; ``lo/hi`` override the observed min/max (EMA)."""
    wg = w.reshape(w.shape[0], -1, group)
    lo = wg.amin(-1) if lo is None else lo
    hi = wg.amax(-1) if hi is None else hi
    qmin, qmax = quant_range(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        zero = torch.zeros_like(scale)
    else:
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
        scale = (hi - lo) / (qmax - qmin)
        zero = torch.round(-lo / scale.clamp(min=1e-12)).clamp(qmin, qmax)
    return to_scale_dtype(scale.clamp(min=1e-8)), zero


def search_scale(w: torch.Tensor, bits: int, group: int, shrinks: int = 16) -> torch.Tensor:
    """Symmetric per-group scales minimising the squared weight error over ranges shrunk to 70-100% of
    max|w| (the engine's round-to-nearest refinement, for any width); ``(out, in/group)``, BF16-rounded."""
    wg = w.detach().float().reshape(w.shape[0], -1, group)
    qmin, qmax = quant_range(bits, True)
    peak = wg.abs().amax(-1)
    best_scale, best_err = None, None
    for shrink in torch.linspace(0.70, 1.0, shrinks).tolist():
        scale = (peak * shrink / qmax).clamp(min=1e-8).to(SCALE_DTYPE).float()
        err = ((torch.clamp(torch.round(wg / scale[..., None]), qmin, qmax) * scale[..., None] - wg) ** 2).sum(-1)
        if best_err is None:
            best_scale, best_err = scale, err
        else:
            better = err < best_err
            best_scale, best_err = torch.where(better, scale, best_scale), torch.where(better, err, best_err)
    return best_scale


def to_scale_dtype(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to BF16 (as stored by the weight-only kernels), straight-through for gradients."""
    return scale + (scale.to(SCALE_DTYPE).float() - scale).detach()


def quantize_groups(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool,
                    ste: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(integer codes, dequantized weight) of ``w`` ``(out, in)`` with per-group ``scale``/``zero``."""
    out_f, in_f = w.shape
    wg = w.reshape(out_f, scale.shape[1], -1)
    qmin, qmax = quant_range(bits, symmetric)
    rounder = round_ste if ste else torch.round
    q = torch.clamp(rounder(wg / scale.unsqueeze(-1)) + zero.unsqueeze(-1), qmin, qmax)
    deq = (q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)
    return q.reshape(out_f, in_f), deq.reshape(out_f, in_f)


def fake_quantize_weight(w: torch.Tensor, bits: int, group_size: int | None = 64,
                         symmetric: bool = True) -> torch.Tensor:
    """Quantize-dequantize a ``(out, in)`` weight (no gradient tricks); returns a tensor like ``w``."""
    if bits >= 16:
        return w
    group = effective_group(w.shape[1], group_size)
    scale, zero = group_params(w.float(), bits, group, symmetric)
    return quantize_groups(w.float(), scale, zero, bits, symmetric)[1].to(w.dtype)


def fake_quantize_tokens(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token (last dim) dynamic fake quantization with STE."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax(-1, keepdim=True).clamp(min=1e-8) / qmax
    return torch.clamp(round_ste(x / scale), -qmax - 1, qmax) * scale


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The ``(out, in)`` weight of a Linear, or of a GPT-2 Conv1D (stored ``(in, out)``)."""
    w = module.weight
    return w.t() if type(module).__name__ == "Conv1D" else w


def set_weight_matrix(module: nn.Module, value: torch.Tensor) -> None:
    with torch.no_grad():
        module.weight.copy_(value.t() if type(module).__name__ == "Conv1D" else value)


class WeightFakeQuant(nn.Module):
    """Fake-quantizes an ``(out, in)`` weight; ``mode``: minmax, ema (moving-average ranges) or lsq (learned
    scale). ``init="search"`` starts LSQ scales at the error-minimising clipped range (symmetric only), so
    training starts from the engine's post-training quantization instead of plain min/max."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int | None = 64, symmetric: bool = True,
                 mode: str = "minmax", momentum: float = 0.9, init: str = "minmax",
                 scale_init: torch.Tensor | None = None, zero_init: torch.Tensor | None = None) -> None:
        super().__init__()
        if mode not in WEIGHT_MODES:
            raise RecipeError(f"weight fake-quant mode must be one of {WEIGHT_MODES}, got '{mode}'")
        if not 2 <= bits <= 8:
            raise RecipeError(f"QAT bits must be 2..8, got {bits}")
        self.bits, self.symmetric, self.mode, self.momentum = bits, symmetric, mode, momentum
        self.group = effective_group(weight.shape[1], group_size)
        wg = weight.detach().float().reshape(weight.shape[0], -1, self.group)
        self.register_buffer("range_lo", wg.amin(-1).clone())
        self.register_buffer("range_hi", wg.amax(-1).clone())
        if init not in ("minmax", "search"):
            raise RecipeError(f"QAT scale init must be 'minmax' or 'search', got '{init}'")
        if scale_init is not None and mode != "lsq":
            raise RecipeError("QAT from given scales (init gptq) needs mode 'lsq' (learned scales)")
        if scale_init is not None:
            scale = scale_init.detach().float().clone()
        elif init == "search" and symmetric:
            scale = search_scale(weight, bits, self.group)
        else:
            scale, _ = group_params(weight.detach().float(), bits, self.group, symmetric)
        self.scale = nn.Parameter(scale) if mode == "lsq" else None
        self.register_buffer("zero_point", None if zero_init is None else zero_init.detach().float().clone())

    def params(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero) to use now (updating the EMA ranges in training)."""
        if self.mode == "lsq":
            qmax = quant_range(self.bits, self.symmetric)[1]
            grad_scale = 1.0 / (self.group * qmax) ** 0.5  # LSQ gradient scaling
            scale = (self.scale - self.scale * grad_scale).detach() + self.scale * grad_scale
            zero = torch.zeros_like(scale) if self.zero_point is None else self.zero_point
            return to_scale_dtype(scale.abs().clamp(min=1e-8)), zero
        if self.mode == "ema":
            if self.training:
                wg = w.detach().reshape(w.shape[0], -1, self.group)
                self.range_lo.mul_(self.momentum).add_(wg.amin(-1), alpha=1 - self.momentum)
                self.range_hi.mul_(self.momentum).add_(wg.amax(-1), alpha=1 - self.momentum)
            return group_params(w.detach(), self.bits, self.group, self.symmetric, self.range_lo, self.range_hi)
        return group_params(w.detach(), self.bits, self.group, self.symmetric)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale, zero = self.params(w)
        return quantize_groups(w, scale, zero, self.bits, self.symmetric, ste=True)[1]

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(integer codes, scale, zero) of ``w`` as the forward pass would quantize it in eval mode."""
        scale, zero = self.params(w)
        q, _ = quantize_groups(w, scale.detach(), zero, self.bits, self.symmetric)
        return q, scale.detach(), zero


class FakeQuantLinear(nn.Module):
    """A Linear (or Conv1D, as ``(out, in)``) with fake-quantized weights and optional per-token activations."""

    def __init__(self, module: nn.Module, bits: int, group_size: int | None = 64, symmetric: bool = True,
                 mode: str = "minmax", act_bits: int | None = None, init: str = "minmax",
                 scale_init: torch.Tensor | None = None, zero_init: torch.Tensor | None = None) -> None:
        super().__init__()
        w = weight_matrix(module).detach().clone()
        self.weight = nn.Parameter(w, requires_grad=module.weight.requires_grad)
        bias = getattr(module, "bias", None)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.weight_quant = WeightFakeQuant(w, bits, group_size, symmetric, mode, init=init, scale_init=scale_init,
                                            zero_init=zero_init)
        self.act_bits = act_bits
        self.source_type = type(module).__name__

    @classmethod
    def from_packed(cls, layer: nn.Module, mode: str = "lsq") -> "FakeQuantLinear":
        """Fake-quant twin of a packed ``WeightOnlyInt4Linear``: latent weight = its dequantized codes, scales
        and zeros = its stored ones (unsigned codes 0..15), so both compute the same weights."""
        dense = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            dense.weight.copy_(layer.dequantize(torch.float32))
            if layer.bias is not None:
                dense.bias.copy_(layer.bias.float())
        return cls(dense, 4, layer.group, symmetric=False, mode=mode, scale_init=layer.weight_scale.float(),
                   zero_init=layer.weight_zero.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits:
            x = fake_quantize_tokens(x, self.act_bits)
        return nn.functional.linear(x, self.weight_quant(self.weight), self.bias)

    def extra_repr(self) -> str:
        q = self.weight_quant
        return (f"in={self.in_features}, out={self.out_features}, w{q.bits}g{q.group}, mode={q.mode}, "
                f"act={'a' + str(self.act_bits) if self.act_bits else 'fp'}")


def transformer_linears(model: nn.Module, family) -> dict[str, nn.Module]:
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
            _set_module(model, name, FakeQuantLinear(linears[name], width, group_size, symmetric, mode, act_bits,
                                                     init))
    log.info("prepared %d linears for QAT", sum(1 for w in plan.values() if w < 16))
    return model


def prepare_qat_from_packed(model: nn.Module, mode: str = "lsq") -> nn.Module:
    """Swap every packed INT4 layer of ``model`` (in place) for :meth:`FakeQuantLinear.from_packed`."""
    from autolite.quant.weight_only import WeightOnlyInt4Linear

    packed = [(n, m) for n, m in model.named_modules() if isinstance(m, WeightOnlyInt4Linear)]
    if not packed:
        raise RecipeError("QAT from a quantized model needs packed INT4 layers (weight-only 4-bit); found none")
    for name, layer in packed:
        _set_module(model, name, FakeQuantLinear.from_packed(layer, mode))
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
        _set_module(model, name, layer.to(module.weight.device))
    if real:
        _record_engine_layers(model, real, known)
    return model


def _float_layer(module: FakeQuantLinear) -> nn.Module:
    deq = module.weight_quant(module.weight)
    if module.source_type == "Conv1D":  # GPT-2 keeps its (in, out) layout so transformers reloads it
        from transformers.pytorch_utils import Conv1D

        layer, deq = Conv1D(module.out_features, module.in_features), deq.t()
    else:
        layer = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    layer.weight.copy_(deq)
    if module.bias is not None:
        layer.bias.copy_(module.bias)
    return layer


def _engine_layer(module: FakeQuantLinear) -> nn.Module | None:
    """The engine's packed module for this layer's codes, or None when the engine cannot hold them."""
    from autolite.quant import weight_only as wo
    quant = module.weight_quant
    q, scale, zero = quant.codes(module.weight)
    bias = module.bias is not None
    if quant.bits == 4 and quant.group in wo.GROUP_SIZES:
        layer = wo.WeightOnlyInt4Linear(module.in_features, module.out_features, bias, quant.group)
        offset = 8 if quant.symmetric else 0  # engine codes are unsigned: w = (q - zero) * scale
        layer.weight_packed = wo.pack_int4((q + offset).to(torch.uint8))
        layer.weight_zero = (zero + offset).to(torch.uint8)
    elif quant.bits == 8 and quant.symmetric and quant.group == module.in_features and int(q.min()) >= -127:
        layer = wo.WeightOnlyInt8Linear(module.in_features, module.out_features, bias)
        layer.weight_int8 = q.to(torch.int8)
        scale = scale[:, 0]
    else:
        return None
    layer.weight_scale = scale.to(wo.SCALE_DTYPE)
    if bias:
        layer.bias = module.bias.detach().float().clone()
    return layer


def _rebuilt_on_load(model: nn.Module) -> set[str]:
    """Linears a pass already recorded in the model's recipe rebuilds as packed modules on load."""
    from autolite.passes import applied_recipe
    from autolite.quant.mixed import MixedPrecision, packed_layers
    from autolite.quant.weight_only import WeightOnly

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
    from autolite.config import Recipe
    from autolite.passes import record_recipe
    from autolite.quant.weight_only import WeightOnly

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


def gptq_start(model: nn.Module, tokenizer, family, texts: list[str] | None, group_size: int = 64,
               embedding: bool = True, calib_tokens: int = 8192, method: str = "gptq") -> nn.Module:
    """A copy of ``model`` quantized as the ``w4gG`` presets (GPTQ, asymmetric, INT8 embedding when asked):
    the starting point of ``init="gptq"``. ``method="rtn"`` builds the same modules by rounding alone, for a
    run resumed from a checkpoint (which holds every trained weight, scale and zero)."""
    import copy

    from autolite.passes import compress
    from autolite.quant.weight_only import WeightOnly

    config = WeightOnly(bits=4, group_size=group_size, symmetric=False, method=method, embedding=embedding,
                        calib_tokens=calib_tokens)
    return compress(copy.deepcopy(model), [config], calib=texts, tokenizer=tokenizer, family=family)


def run_qat(model: nn.Module, tokenizer, family, bits: int | dict[str, int], data, config, *,
            heldout=None, group_size: int | None = 64, mode: str = "ema", act_bits: int | None = None,
            checkpoint_dir=None, progress=None, init: str = "minmax", start: nn.Module | None = None,
            embedding: bool = True):
    """Short, bounded QAT: ``model`` (FP32) is the teacher of a fake-quantized copy trained with the
    distillation trainer (``config``: a ``TrainConfig``). Returns the TrainResult whose ``student`` still
    holds FakeQuantLinear modules; pass it to :func:`convert_qat` to fold the quantized weights.

    ``init="gptq"`` (4-bit, LSQ): start from ``start`` (a packed INT4 model, e.g. the ``w4g64`` preset) or
    from :func:`gptq_start` on the training texts (INT8 embedding with ``embedding``); step 0 is that model."""
    import copy
    import dataclasses

    from autolite.distill.train import distill

    if init == "gptq":
        if bits != 4 or act_bits:
            raise RecipeError("QAT init gptq starts from GPTQ INT4 weights: use a w4gG format without act_bits")
        packed = copy.deepcopy(start) if start is not None else gptq_start(
            model, tokenizer, family, data.texts, group_size or 64, embedding)
        student = prepare_qat_from_packed(packed, mode)
        if not isinstance(student.get_input_embeddings(), nn.Embedding):  # INT8 rows: nothing to freeze or train
            config = dataclasses.replace(config, freeze_embeddings=False)
    else:
        student = prepare_qat(copy.deepcopy(model), family, bits, group_size, mode=mode, act_bits=act_bits,
                              init=init)
    for param in student.parameters():  # trains the same set whatever the teacher's (frozen) flags say
        param.requires_grad_(True)
    return distill(model, student, tokenizer, family, config, data, heldout, checkpoint_dir=checkpoint_dir,
                   progress=progress)
