"""GPTQ (Frantar et al., 2022): group-wise INT4 weights chosen to minimise the layer's output error.

For a linear with calibration inputs ``X`` (rows = tokens) the output error of a weight change is
governed by the Hessian ``H = 2/n XᵀX``. Columns are quantized one at a time (in blocks, as the paper
does for speed) and the rounding error of each column is spread over the columns not yet quantized
through the inverse Hessian's Cholesky factor, so later columns compensate for earlier ones.

Group scales/zeros use the same range search as round-to-nearest (``formats.search_group_params``).
With ``act_order`` columns are visited by decreasing ``diag(H)`` (the most active inputs first) and the
group parameters are fixed up front from the float weights ("static groups"), so groups stay
contiguous in the original column order and the result is stored in exactly the packed format of
round-to-nearest (the kernels are unchanged). Without it, each group's parameters are computed when
the walk reaches the group, on the error-compensated weights.
"""
from __future__ import annotations

import torch
from torch import nn

from autolite.errors import NumericsError
from autolite.quant.common import linear_weight
from autolite.quant.formats import SCALE_DTYPE, search_group_params
from autolite.quant.layers import WeightOnlyInt4Linear


class HessianAccumulator:
    """Running ``sum XᵀX`` over the rows fed to one linear; :meth:`hessian` gives ``2/n XᵀX``."""

    def __init__(self, in_features: int, name: str) -> None:
        self.name = name
        self.sum = torch.zeros(in_features, in_features, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()
        if not torch.isfinite(rows).all():
            raise NumericsError(f"GPTQ calibration produced NaN/inf at the input of layer '{self.name}'; "
                                "check the model's weights or the calibration texts")
        self.sum += (rows.T @ rows).double()
        self.rows += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.rows == 0:
            raise NumericsError(f"GPTQ calibration never reached layer '{self.name}'")
        return (self.sum * (2.0 / self.rows)).float()


def inverse_cholesky(hessian: torch.Tensor, damp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with ``λ = damp * mean(diag H)`` (raised until it works)."""
    h = hessian.double()
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    mean = float(torch.diag(h).mean())
    for attempt in range(6):
        lower, info = torch.linalg.cholesky_ex(h + eye * (damp * 10 ** attempt * mean))
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0:
                return upper.float()
    raise NumericsError(f"GPTQ: the Hessian of layer '{name}' is not positive definite even with damping "
                        f"{damp * 10 ** 5:g}; use method: rtn for this model")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, group: int, symmetric: bool, *,
                  damp: float = 0.01, act_order: bool = True, block: int = 128, name: str = "linear"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ codes ``q`` (out, in) uint8 in [0, 15], ``scale`` (out, in/group) BF16 and ``zero`` uint8.

    Same contract as ``formats.quantize_int4``: ``w ≈ (q - zero) * scale`` group-wise.
    """
    w = weight.detach().float().clone()
    out_features, in_features = w.shape
    h = hessian.float().clone()
    dead = torch.diag(h) == 0  # inputs never active: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    ngroups = in_features // group
    scale, zero = torch.zeros(out_features, ngroups), torch.zeros(out_features, ngroups)
    if act_order:
        scale, zero = search_group_params(w.view(out_features, ngroups, group), symmetric)
        perm = torch.argsort(torch.diag(h), descending=True)
    else:
        perm = torch.arange(in_features)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = inverse_cholesky(h, damp, name)
    codes = torch.zeros(out_features, in_features)
    block = max(group, block // group * group)  # blocks hold whole groups (dynamic groups are computed in-block)
    group_of = (perm // group).tolist()
    for start in range(0, in_features, block):
        end = min(start + block, in_features)
        errors = _quantize_block(w, hinv, codes, scale, zero, start, end, group, group_of, symmetric, act_order)
        w[:, end:] -= errors @ hinv[start:end, end:]
    codes = codes[:, torch.argsort(perm)]
    return codes.to(torch.uint8), scale.to(SCALE_DTYPE), zero.to(torch.uint8)


def gptq_linears(linears: dict[str, nn.Module], hessian: torch.Tensor, group: int, symmetric: bool, *,
                 damp: float, act_order: bool, kernel_max_rows: int, name: str) -> dict[str, WeightOnlyInt4Linear]:
    """GPTQ of linears sharing one input (stacked by rows, one Hessian), split back into packed INT4 layers."""
    weights = [linear_weight(m) for m in linears.values()]
    q, scale, zero = gptq_quantize(torch.cat(weights), hessian, group, symmetric, damp=damp, act_order=act_order,
                                   name=name)
    out, start = {}, 0
    for (fqn, module), weight in zip(linears.items(), weights):
        rows = slice(start, start + weight.shape[0])
        out[fqn] = WeightOnlyInt4Linear.from_codes(module, group, kernel_max_rows, q[rows], scale[rows], zero[rows])
        start += weight.shape[0]
    return out


def _quantize_block(w: torch.Tensor, hinv: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                    zero: torch.Tensor, start: int, end: int, group: int, group_of: list[int], symmetric: bool,
                    dynamic_groups_fixed: bool) -> torch.Tensor:
    """Quantize columns ``start:end`` in place (codes, and scale/zero for dynamic groups); returns the
    scaled errors ``(w - q) / d`` of the block, to propagate to the later columns."""
    block_w = w[:, start:end].clone()
    block_hinv = hinv[start:end, start:end]
    errors = torch.zeros_like(block_w)
    for i in range(end - start):
        column = start + i
        g = group_of[column]
        if not dynamic_groups_fixed and column % group == 0:
            s, z = search_group_params(block_w[:, i:i + group].unsqueeze(1), symmetric)
            scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
        s, z = scale[:, g], zero[:, g]
        q = (torch.round(block_w[:, i] / s) + z).clamp(0, 15)
        codes[:, column] = q
        err = (block_w[:, i] - (q - z) * s) / block_hinv[i, i]
        block_w[:, i:].addr_(err, block_hinv[i, i:], alpha=-1.0)
        errors[:, i] = err
    return errors
