"""Export-test helpers: a uniformly FFN-pruned model, a toy int8 pass (with restore) for BERT."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from autolite.config import PassConfig
from autolite.passes import register_pass

FAST_TEXTS = 4  # corpus texts the default-run validations use (the CLI uses the full held-out split)


def prune_ffn(model: torch.nn.Module, family, keep: int) -> torch.nn.Module:
    """Keep the first ``keep`` FFN neurons of every layer and update the HF config (a pruned shape)."""
    for layer in family.layers(model):
        up, down = layer.ffn.up, layer.ffn.down
        up.weight.data = up.weight.data[:keep].clone()
        up.bias.data = up.bias.data[:keep].clone()
        up.out_features = keep
        down.weight.data = down.weight.data[:, :keep].clone()
        down.in_features = keep
    setattr(model.config, family.config_keys["intermediate"], keep)
    return model


class Int8Linear(torch.nn.Module):
    """Weight stored as int8 with a per-row scale (what a quantized autolite module looks like)."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, 1))
        self.register_buffer("bias", torch.zeros(out_features))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> "Int8Linear":
        module = cls(linear.out_features, linear.in_features)
        scale = linear.weight.detach().abs().amax(1, keepdim=True).clamp(min=1e-8) / 127
        module.qweight = torch.round(linear.weight.detach() / scale).to(torch.int8)
        module.scale, module.bias = scale, linear.bias.detach().clone()
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.qweight.float() * self.scale, self.bias)


@dataclasses.dataclass
class ToyInt8(PassConfig):
    """Quantizes every layer's FFN down projection (test only)."""

    name = "test-export-int8"


def _swap(model, config, ctx, convert: bool):
    from autolite.arch import family_of

    for layer in family_of(model).layers(model):
        down = layer.ffn.down
        new = Int8Linear.from_linear(down) if convert else Int8Linear(down.out_features, down.in_features)
        layer.module.output.dense = new  # BERT's FFN down projection
    return model


@register_pass(ToyInt8, restore=lambda m, c, x: _swap(m, c, x, convert=False))
def apply_toy_int8(model, config, ctx):
    return _swap(model, config, ctx, convert=True)


@pytest.fixture
def fast_texts():
    return FAST_TEXTS


@pytest.fixture
def pruned():
    """``pruned(model, family, keep)``: the FFN-pruning helper."""
    return prune_ffn


@pytest.fixture
def toy_int8():
    """The toy int8 pass config class (its handler is registered on import)."""
    return ToyInt8
