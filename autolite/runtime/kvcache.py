"""A static KV cache for the decode loop: every layer's keys and values allocated once, indexed by slot.

``keys`` / ``values`` are one tensor each, ``(layers, slots, kv_heads, max_len, head_dim)``; ``k[layer]`` /
``v[layer]`` are views of one layer. A slot is one sequence (one row of a batch); ``lengths[slot]`` counts
the positions written so far. The decode step reads the first ``rows`` slots and the first ``window``
positions of all layers as one view (no copy: a compiled step guards two tensors, not two per layer), so
active sequences are kept in slots ``0 .. rows-1`` (:meth:`move` compacts them when one leaves).
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
        size = (shape.layers, shape.slots, shape.kv_heads, shape.max_len, shape.head_dim)
        self.keys = torch.zeros(size, dtype=dtype, device=device)
        self.values = torch.zeros(size, dtype=dtype, device=device)
        self.k, self.v = list(self.keys.unbind(0)), list(self.values.unbind(0))
        self.lengths = [0] * shape.slots

    @property
    def max_len(self) -> int:
        return self.shape.max_len

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))

    def reset(self, slot: int, length: int = 0) -> None:
        """Forget slot ``slot`` beyond ``length`` positions (stale values past it are masked, never read)."""
        self.lengths[slot] = length

    def move(self, src: int, dst: int) -> None:
        """Copy slot ``src``'s filled positions into slot ``dst`` (compaction when a sequence leaves)."""
        n = self.lengths[src]
        for t in (self.keys, self.values):
            t[:, dst, :, :n].copy_(t[:, src, :, :n])
        self.lengths[dst] = n

    def copy_prefix(self, src: "StaticKVCache", src_slot: int, dst_slot: int, length: int) -> None:
        """Copy the first ``length`` positions of ``src``'s slot into this cache's slot (prefix reuse)."""
        for t, s in ((self.keys, src.keys), (self.values, src.values)):
            t[:, dst_slot, :, :length].copy_(s[:, src_slot, :, :length])
        self.lengths[dst_slot] = length
