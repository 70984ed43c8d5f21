"""Make layers that dynamo cannot trace into single opaque graph nodes before ``torch.compile``.

The INT8 dynamic layers' engine kernels (``torch.ops.quantized.linear_dynamic``) take a TorchScript
packed-weight object that dynamo cannot put in a graph, and their forward reads the kernel choice from a
buffer (``.item()``): both are graph breaks, one per layer. Every break starts a resumed frame whose guards
pin that layer's parameter ids, so a 12-layer encoder recompiles the same code once per layer, hits
dynamo's recompile limit and runs the rest eagerly (measured: int8-dynamic+compile slower than
int8-dynamic). Routing each such layer through one ``autolite::opaque_layer`` custom op keeps the whole
forward in one graph: Inductor fuses the ops between the linears while the INT8 kernels run as before.
"""
from __future__ import annotations

import itertools
import logging
import types
import weakref

import torch
from torch import nn

log = logging.getLogger(__name__)
_LAYERS: "weakref.WeakValueDictionary[int, nn.Module]" = weakref.WeakValueDictionary()
_KEYS = itertools.count(1)


@torch.library.custom_op("autolite::opaque_layer", mutates_args=())
def opaque_layer(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    """Run the registered layer ``key``'s eager forward on ``x``."""
    layer = _LAYERS.get(key)
    if layer is None:
        raise RuntimeError(f"autolite opaque layer {key} no longer exists")
    return layer._autolite_eager_forward(x)


@opaque_layer.register_fake
def _(x: torch.Tensor, key: int, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


def _opaque_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.autolite.opaque_layer(x, self._autolite_key, self.out_features)


def untraceable(module: nn.Module) -> bool:
    """INT8 dynamic layers on a quantized-engine kernel (``_int_mm`` ones trace fine)."""
    return type(module).__name__ == "DynamicInt8Linear" and module.kernel_name != "int_mm"


def make_opaque(model: nn.Module) -> int:
    """Route every untraceable layer of ``model`` through the opaque op; returns how many."""
    count = 0
    for module in model.modules():
        if not untraceable(module) or getattr(module, "_autolite_key", None):
            continue
        module.prepack()
        module._autolite_eager_forward = types.MethodType(type(module).forward, module)
        module._autolite_key = next(_KEYS)
        _LAYERS[module._autolite_key] = module
        module.forward = types.MethodType(_opaque_forward, module)
        count += 1
    return count
