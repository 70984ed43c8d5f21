"""A static KV cache for the decode loop: every layer's keys and values allocated once, indexed by slot.

``k[layer]`` / ``v[layer]`` are ``(slots, kv_heads, max_len, head_dim)``. A slot is one sequence (one row
of a batch); ``lengths[slot]`` counts the positions written so far. The decode step reads the first
``rows`` slots and the first ``window`` positions (views, no copy), so active sequences are kept in
slots ``0 .. rows-1`` (:meth:`move` compacts them when one leaves).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheShape:
    """What one cache holds: layers, slots (sequences), KV heads, positions per slot, head size."""

    layers: int
    slots: int
    kv_heads: int
    max_len: int
    head_dim: int


class StaticKVCache:
    """Pre-allocated keys and values per layer; see the module docstring."""

    def __init__(self, shape: CacheShape, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        self.shape = shape
        size = (shape.slots, shape.kv_heads, shape.max_len, shape.head_dim)
        self.k = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.layers)]
        self.v = [torch.zeros(size, dtype=dtype, device=device) for _ in range(shape.layers)]
        self.lengths = [0] * shape.slots

    @property
    def max_len(self) -> int:
        return self.shape.max_len

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def reset(self, slot: int, length: int = 0) -> None:
        """Forget slot ``slot`` beyond ``length`` positions (stale values past it are masked, never read)."""
        self.lengths[slot] = length

    def move(self, src: int, dst: int) -> None:
        """Copy slot ``src``'s filled positions into slot ``dst`` (compaction when a sequence leaves)."""
        n = self.lengths[src]
        for k, v in zip(self.k, self.v):
            k[dst, :, :n].copy_(k[src, :, :n])
            v[dst, :, :n].copy_(v[src, :, :n])
        self.lengths[dst] = n

    def copy_prefix(self, src: "StaticKVCache", src_slot: int, dst_slot: int, length: int) -> None:
        """Copy the first ``length`` positions of ``src``'s slot into this cache's slot (prefix reuse)."""
        for k, v, sk, sv in zip(self.k, self.v, src.k, src.v):
            k[dst_slot, :, :length].copy_(sk[src_slot, :, :length])
            v[dst_slot, :, :length].copy_(sv[src_slot, :, :length])
        self.lengths[dst_slot] = length
