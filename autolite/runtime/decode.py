"""Our own decode loop for Llama-like decoders and GPT-2: static KV cache, chunked prefill, compiled step.

The forward here is functional: it calls the model's own modules (norms, projections, the packed INT4 /
INT8 layers of ``autolite.quant``, activation-sparse layers) but does the attention, rotary embedding and
cache writes itself over a :class:`~autolite.runtime.kvcache.StaticKVCache`. Why not transformers'
``StaticCache`` + the model's forward: that forward rebuilds masks and position tensors, dispatches
through attention-interface tables and output dataclasses on every call, which at batch 1 costs more
than the matmuls of a 135M model; a forward of ~40 lines per layer compiles into one graph without
breaks, and takes per-row positions, so the continuous batcher can step rows of different lengths
together. Each row attends to its own positions ``0 .. pos`` only (no padding anywhere).

``Decoder.step`` (one new token per row) is compiled once with ``torch.compile(fullgraph=True)`` (rows
and attention window become dynamic after their first change, so at most a few compiles); prefill runs
eagerly in chunks of ``prefill_chunk`` tokens (the quantized layers take their dense path there).
``cpp_wrapper=True`` compiles the step with inductor's C++ wrapper (kernel calls made from C++, not from a
Python wrapper function); off by default: on SmolLM2-135M INT4 (2 threads) it measured the same tok/s as the
Python wrapper (69.2 vs 68.1, interleaved) and its compile took ~4 min instead of ~1. A graph the C++ wrapper
cannot build falls back to the Python wrapper (logged).
"""
from __future__ import annotations

import logging
import math
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from autolite.arch import ArchSpec, base_model
from autolite.errors import AutoliteError, UnsupportedArchitectureError
from autolite.quant.common import flatten_rows
from autolite.quant.formats import SCALE_DTYPE
from autolite.quant.layers import WeightOnlyInt4Linear
from autolite.runtime.kvcache import CacheShape, StaticKVCache
from autolite.runtime.sampling import Sampling, find_stop, next_tokens

log = logging.getLogger(__name__)
WINDOW = 128  # the attention window grows in steps of this many positions (bounded recompiles)
MAX_NEW_TOKENS = 65536


class DecodeInputError(AutoliteError):
    """A generation request the decode loop cannot run (prompt too long, bad max_tokens)."""


@dataclass
class Layer:
    """One decoder layer's modules as the functional forward uses them."""

    norm1: nn.Module
    norm2: nn.Module
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    o: nn.Module
    mlp: Callable[[torch.Tensor], torch.Tensor]
    q_norm: nn.Module | None = None
    k_norm: nn.Module | None = None
    fused: tuple[nn.Module, ...] = ()  # the FusedInt4 packs among qkv / mlp


class FusedInt4(nn.Module):
    """Several packed INT4 linears of one input (q/k/v, gate/up) as one kernel call at decode: their codes
    stacked along the output dimension in one tile-packed weight, the outputs split after; the same numbers
    as the separate calls, one kernel launch (and thread barrier) instead of two or three. Calls of more than
    ``kernel_max_rows`` rows (prefill) run the original layers, so only the kernel table is held here."""

    def __init__(self, parts: list[WeightOnlyInt4Linear]) -> None:
        super().__init__()
        first = parts[0]
        self.parts, self.sizes = parts, [p.out_features for p in parts]
        self.group, self.kernel_max_rows = first.group, first.kernel_max_rows
        stacked = WeightOnlyInt4Linear(first.in_features, sum(self.sizes), False, first.group, first.kernel_max_rows)
        for name in ("weight_packed", "weight_scale", "weight_zero"):
            setattr(stacked, name, torch.cat([getattr(p, name) for p in parts]))
        self.packed, self.table = stacked.kernel_weight()
        biases = [p.bias if p.bias is not None else torch.zeros(p.out_features) for p in parts]
        self.bias = torch.cat(biases) if any(p.bias is not None for p in parts) else None

    @staticmethod
    def fusable(parts: list[nn.Module]) -> bool:
        first = parts[0]
        return all(type(p) is WeightOnlyInt4Linear and p.in_features == first.in_features and p.group == first.group
                   and p.kernel_max_rows == first.kernel_max_rows for p in parts)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rows, lead = flatten_rows(h)  # (N, in)
        if rows.shape[0] > self.kernel_max_rows or rows.device.type != "cpu":
            return tuple(p(h) for p in self.parts)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(SCALE_DTYPE), self.packed, self.group, self.table)
        y = y.to(h.dtype) if self.bias is None else y.to(h.dtype) + self.bias.to(h.dtype)  # (N, sum(out))
        return tuple(part.reshape(*lead, -1) for part in y.split(self.sizes, dim=-1))


class NibbleInt8Head(nn.Module):
    """An INT8 per-row head ``x @ (q * s)ᵀ`` run by the INT4 kernel at decode: with ``q + 128 = 16 hi + lo``
    (hi, lo in [0, 15]), ``s q = 16 s (hi - 8) + s (lo - 8) + 8 s``, so hi and lo are stacked as 2V output rows
    of one tile-packed INT4 weight (scale 16 s and zero 0, scale s and zero 8 s: exact in BF16) and the two
    halves summed in FP32 after. The same weights and bytes; the outputs differ from ``_weight_int8pack_mm``'s
    only by BF16 rounding (each kernel rounds its outputs to BF16, here the two halves separately). The INT4
    kernel reads them ~1.5x faster at one row (SmolLM2's 49152x576 head: 3.1 vs 4.5 ms, one thread), and the
    head of a small model is a large share of its step. Calls of more than ``kernel_max_rows`` rows run the
    original head."""

    def __init__(self, head: nn.Module, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
                 ) -> None:
        super().__init__()
        vocab, hidden = weight_int8.shape
        self.head, self.vocab, self.kernel_max_rows, self.bias = head, vocab, head.kernel_max_rows, bias
        self.padded = 8 * math.ceil(vocab / 8)  # the kernel packs output rows in multiples of 16 (2 halves)
        self.group = next(g for g in (256, 128, 64, 32) if hidden % g == 0)
        u = F.pad(weight_int8.to(torch.int32) + 128, (0, 0, 0, self.padded - vocab))  # (Vp, E) in [0, 255]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.cat((u >> 4, u & 15)), 1)
        s = F.pad(scale.float(), (0, self.padded - vocab))
        per_row = torch.stack((torch.cat((16 * s, s)), torch.cat((torch.zeros_like(s), 8 * s))), dim=-1)  # (2Vp, 2)
        self.table = per_row.expand(hidden // self.group, -1, -1).contiguous().to(SCALE_DTYPE)  # (groups, 2Vp, 2)

    @staticmethod
    def wrap(head: nn.Module) -> nn.Module:
        """``head`` run by the INT4 kernel when it is an INT8 per-row head on CPU, else ``head`` itself."""
        codes = getattr(head, "embedding", head)  # TiedInt8Head reads its embedding's codes
        weight, scale = getattr(codes, "weight_int8", None), getattr(codes, "weight_scale", None)
        if (weight is None or scale is None or scale.dim() != 1 or weight.device.type != "cpu"
                or weight.shape[1] % 32 or not hasattr(head, "kernel_max_rows")):
            return head
        return NibbleInt8Head(head, weight, scale, getattr(head, "bias", None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, lead = flatten_rows(x)  # (N, E)
        if rows.shape[0] > self.kernel_max_rows or rows.device.type != "cpu":
            return self.head(x)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows.to(SCALE_DTYPE), self.packed, self.group, self.table)
        y = (y[:, :self.vocab].float() + y[:, self.padded:self.padded + self.vocab].float()).to(x.dtype)  # (N, V)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*lead, self.vocab)


def _projections(parts: list[nn.Module]) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    """One callable computing every linear of ``parts`` on the same input: fused when they are packed INT4."""
    if FusedInt4.fusable(parts):
        return FusedInt4(parts)
    return lambda h: tuple(p(h) for p in parts)


def _llama_layer(layer: nn.Module) -> Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _projections([attn.q_proj, attn.k_proj, attn.v_proj])

    if hasattr(mlp, "gate_up_proj"):  # GLM: gate and up in one matrix
        def ffn(h: torch.Tensor) -> torch.Tensor:
            gate, up = mlp.gate_up_proj(h).chunk(2, dim=-1)
            return mlp.down_proj(mlp.activation_fn(gate) * up)
        gate_up = None
    else:
        gate_up = _projections([mlp.gate_proj, mlp.up_proj])

        def ffn(h: torch.Tensor) -> torch.Tensor:
            gate, up = gate_up(h)
            return mlp.down_proj(mlp.act_fn(gate) * up)

    fused = tuple(f for f in (qkv, gate_up) if isinstance(f, FusedInt4))
    return Layer(layer.input_layernorm, layer.post_attention_layernorm, qkv, attn.o_proj, ffn,
                 getattr(attn, "q_norm", None), getattr(attn, "k_norm", None), fused)


def _gpt2_layer(block: nn.Module) -> Layer:
    attn, mlp = block.attn, block.mlp

    def qkv(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return attn.c_attn(h).split(attn.split_size, dim=-1)

    def ffn(h: torch.Tensor) -> torch.Tensor:
        return mlp.c_proj(mlp.act(mlp.c_fc(h)))

    return Layer(block.ln_1, block.ln_2, qkv, attn.c_proj, ffn)


class Decoder:
    """A causal LM's functional forward over a static cache, plus the generation loop; see the module doc."""

    FAMILIES = ("llama", "gpt2")

    def __init__(self, model: nn.Module, family: ArchSpec, *, compile: bool = True, prefill_chunk: int = 64,
                 cpp_wrapper: bool = False) -> None:
        if family.kind != "decoder" or family.name not in self.FAMILIES:
            raise UnsupportedArchitectureError(f"the decode loop runs Llama-like decoders and GPT-2, not {family.name}")
        self.model, self.family, self.prefill_chunk = model.eval(), family, prefill_chunk
        base, config = base_model(model), model.config
        self.is_gpt2 = family.name == "gpt2"
        self.layers = [_gpt2_layer(b) for b in base.h] if self.is_gpt2 else [_llama_layer(l) for l in base.layers]
        self.embed = base.wte if self.is_gpt2 else base.embed_tokens
        self.final_norm = base.ln_f if self.is_gpt2 else base.norm
        self.head = NibbleInt8Head.wrap(model.get_output_embeddings())
        views = family.layers(model)
        self.heads, self.kv_heads = views[0].attention.num_heads, views[0].attention.num_kv_heads
        self.head_dim = views[0].attention.head_dim
        self.max_positions = config.n_positions if self.is_gpt2 else config.max_position_embeddings
        self.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        self._rope = None if self.is_gpt2 else self._rope_table(base)
        _prepare_kernels(model, self.layers)
        self.cpp_wrapper = cpp_wrapper
        self._step = self._compiled_step() if compile else self._step_forward
        self.compiled = compile

    def _compiled_step(self) -> Callable:
        """``_step_forward`` compiled with fullgraph, on a code object of its own, with the C++ wrapper when asked."""
        options = {"cpp_wrapper": True} if self.cpp_wrapper else None
        return torch.compile(_own_code(self._step_forward), fullgraph=True, options=options)

    def _run_step(self, *args: torch.Tensor) -> torch.Tensor:
        """The compiled step; a graph the C++ wrapper fails to build is compiled again with the Python one."""
        try:
            return self._step(*args)
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            if not (self.compiled and self.cpp_wrapper):
                raise
            log.warning("decode step: the C++ wrapper failed (%s); compiling with the Python wrapper",
                        str(exc).splitlines()[0][:200])
            self.cpp_wrapper = False
            self._step = self._compiled_step()
            return self._step(*args)

    def _rope_table(self, base: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin ``(max_positions, head_dim)`` from the model's own rotary module (any rope scaling)."""
        pos = torch.arange(self.max_positions)[None]
        with torch.no_grad():
            cos, sin = base.rotary_emb(torch.zeros(1, dtype=self.dtype), pos)
        return cos[0].contiguous(), sin[0].contiguous()

    def new_cache(self, slots: int, max_len: int) -> StaticKVCache:
        """A cache of ``slots`` sequences of up to ``max_len`` positions (at most the model's context)."""
        max_len = min(WINDOW * math.ceil(max_len / WINDOW), self.max_positions)  # few distinct shapes
        shape = CacheShape(len(self.layers), slots, self.kv_heads, max_len, self.head_dim)
        return StaticKVCache(shape, self.dtype, next(self.model.parameters()).device)

    # --- forward -------------------------------------------------------------------------------------------
    def _attention(self, layer: Layer, h: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor,
                   v_cache: torch.Tensor, new_kv: list | None = None) -> torch.Tensor:
        """Self-attention of ``h`` (B, T, E) at positions ``pos`` (B, T) over the cache views (B, nkv, W, hs).
        Prefill (``new_kv`` None) writes this call's K/V into the views; the decode step (one token per row)
        only reads them and appends its K/V (B, nkv, hs) to ``new_kv``, which ``step`` writes after the graph:
        a compiled graph that writes into its input views copies every layer's cache window twice per token."""
        b, t, _ = h.shape
        q, k, v = layer.qkv(h)
        q = q.view(b, t, self.heads, self.head_dim)  # (B, T, nh, hs)
        k = k.view(b, t, self.kv_heads, self.head_dim)  # (B, T, nkv, hs)
        v = v.view(b, t, self.kv_heads, self.head_dim)
        if layer.q_norm is not None:  # Qwen3: per-head RMSNorm of q and k
            q, k = layer.q_norm(q), layer.k_norm(k)
        if self._rope is not None:
            cos, sin = self._rope[0][pos][:, :, None], self._rope[1][pos][:, :, None]  # (B, T, 1, hs)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if new_kv is not None:  # T == 1
            k, v = k.to(k_cache.dtype), v.to(v_cache.dtype)
            new_kv.append((k[:, 0], v[:, 0]))
            out = self._attend_one(q, k.to(q.dtype), v.to(q.dtype), k_cache.to(q.dtype), v_cache.to(q.dtype), pos)
            return layer.o(out)  # (B, 1, E)
        rows = torch.arange(b, device=h.device)[:, None]  # (B, 1)
        k_cache[rows, :, pos] = k.to(k_cache.dtype)  # (B, T, nkv, hs) into (B, nkv, S, hs)
        v_cache[rows, :, pos] = v.to(v_cache.dtype)
        mask = torch.arange(k_cache.shape[2], device=h.device)[None, None] <= pos[:, :, None]  # (B, T, W)
        out = self._attend(q, k_cache.to(q.dtype), v_cache.to(q.dtype), mask)  # (B, T, nh * hs)
        return layer.o(out)  # (B, T, E)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Masked softmax attention of ``q`` (B, T, nh, hs) over ``k``/``v`` (B, nkv, W, hs), the query heads
        of one KV head grouped (GQA without repeating K/V), as matmuls; (B, T, nh * hs)."""
        b, t, _, hs = q.shape
        nkv, w = k.shape[1], k.shape[2]
        rep = self.heads // nkv
        q = q.view(b, t, nkv, rep, hs).permute(0, 2, 3, 1, 4).reshape(b, nkv, rep * t, hs)  # (B, nkv, rep*T, hs)
        scores = (q @ k.transpose(-1, -2)).view(b, nkv, rep, t, w) * hs ** -0.5  # (B, nkv, rep, T, W)
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype).view(b, nkv, rep * t, w)
        out = (probs @ v).view(b, nkv, rep, t, hs)  # (B, nkv, rep, T, hs)
        return out.permute(0, 3, 1, 2, 4).reshape(b, t, self.heads * hs)

    def _attend_one(self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Attention of one query per row ``q`` (B, 1, nh, hs) over the cache ``k``/``v`` (B, nkv, W, hs) at the
        positions before ``pos`` (B, 1) plus the row's own new ``k_new``/``v_new`` (B, 1, nkv, hs); (B, 1, nh * hs).
        Products and sums, which the compiled step fuses into a few loops with no GEMM call (measured ~8x faster
        than the SDPA CPU kernel, which costs as much as a projection at this size)."""
        b, _, _, hs = q.shape
        nkv, w = k.shape[1], k.shape[2]
        q = q.view(b, nkv, self.heads // nkv, 1, hs)  # (B, nkv, rep, 1, hs)
        old = (q * k[:, :, None]).sum(-1) * hs ** -0.5  # (B, nkv, rep, W)
        seen = torch.arange(w, device=q.device)[None] < pos  # (B, W)
        old = old.masked_fill(~seen.view(b, 1, 1, w), float("-inf"))
        new = (q[..., 0, :] * k_new.view(b, nkv, 1, hs)).sum(-1, keepdim=True) * hs ** -0.5  # (B, nkv, rep, 1)
        probs = torch.softmax(torch.cat((old, new), dim=-1).float(), dim=-1).to(q.dtype)  # (B, nkv, rep, W + 1)
        out = (probs[..., :w, None] * v[:, :, None]).sum(-2) + probs[..., w:] * v_new.view(b, nkv, 1, hs)
        return out.reshape(b, 1, self.heads * hs)  # (B, nkv, rep, hs) -> (B, 1, nh * hs)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 new_kv: list | None = None) -> torch.Tensor:
        """Logits (B, V) of the last position of ``ids`` (B, T) at positions ``pos`` (B, T); ``keys``/``values``:
        the cache views (L, B, nkv, W, hs) of the rows' first W positions, every layer; ``new_kv``: see
        :meth:`_attention`."""
        x = self.embed(ids)  # (B, T, E)
        if self.is_gpt2:
            x = x + self.model.transformer.wpe(pos)
        for i, layer in enumerate(self.layers):
            x = x + self._attention(layer, layer.norm1(x), pos, keys[i], values[i], new_kv)
            x = x + layer.mlp(layer.norm2(x))
        return self.head(self.final_norm(x[:, -1:]))[:, 0]  # (B, V)

    def _step_forward(self, ids: torch.Tensor, pos: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decode step (what is compiled): logits (B, V) and the new token's K and V of every layer
        (B, L, nkv, hs); the cache views are only read."""
        new_kv: list = []
        logits = self._forward(ids, pos, keys, values, new_kv)
        return logits, torch.stack([k for k, _ in new_kv], dim=1), torch.stack([v for _, v in new_kv], dim=1)

    @staticmethod
    def _views(cache: StaticKVCache, rows: slice, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache views (L, B, nkv, W, hs) of ``rows`` over the first positions up to ``end`` (rounded up to
        a multiple of WINDOW; rows and window are marked dynamic so the compiled step is reused)."""
        window = min(cache.max_len, WINDOW * math.ceil(end / WINDOW))
        views = cache.keys[:, rows, :, :window], cache.values[:, rows, :, :window]
        for t in views:
            torch._dynamo.maybe_mark_dynamic(t, 1)
            torch._dynamo.maybe_mark_dynamic(t, 3)
        return views

    @torch.inference_mode()
    def prefill(self, cache: StaticKVCache, slot: int, ids: list[int], start: int = 0) -> torch.Tensor:
        """Run ``ids`` into ``slot`` from position ``start`` in chunks; logits (V,) of the last token."""
        if start + len(ids) > cache.max_len:
            raise DecodeInputError(f"the prompt has {start + len(ids)} tokens; the cache holds {cache.max_len}")
        logits = None
        for begin in range(0, len(ids), self.prefill_chunk):
            chunk = torch.tensor([ids[begin:begin + self.prefill_chunk]])  # (1, T)
            first = start + begin
            pos = torch.arange(first, first + chunk.shape[1])[None]  # (1, T)
            logits = self._forward(chunk, pos, *self._views(cache, slice(slot, slot + 1), first + chunk.shape[1]))
        cache.lengths[slot] = start + len(ids)
        return logits[0]

    @torch.inference_mode()
    def step(self, cache: StaticKVCache, tokens: torch.Tensor) -> torch.Tensor:
        """One decode step for slots ``0 .. len(tokens)-1``: logits (B, V); each slot's length grows by one."""
        rows = tokens.shape[0]
        pos = torch.tensor(cache.lengths[:rows])[:, None]  # (B, 1)
        ids = tokens[:, None]  # (B, 1)
        for t in (ids, pos):
            torch._dynamo.maybe_mark_dynamic(t, 0)
        views = self._views(cache, slice(0, rows), max(cache.lengths[:rows]) + 1)
        logits, new_k, new_v = self._run_step(ids, pos, *views)
        at = (slice(None), torch.arange(rows), slice(None), pos[:, 0])  # every layer, row b at position pos[b]
        cache.keys[at], cache.values[at] = new_k, new_v  # (B, L, nkv, hs)
        for row in range(rows):
            cache.lengths[row] += 1
        return logits


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of ``x`` (B, T, h, hs) with the half-split convention of HF Llama."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _own_code(method: Callable) -> Callable:
    """``method`` bound to a copy of its function with a code object of its own: dynamo keeps one cache (and
    one recompile limit of 8) per code object, so every Decoder (model) compiles into its own entries instead
    of piling guards onto the entries of every other Decoder in the process."""
    fn = method.__func__
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return types.MethodType(copy, method.__self__)


def _prepare_kernels(model: nn.Module, layers: list[Layer]) -> None:
    """Build the packed layers' cached kernel tables now, so the compiled step only reads them (not those of
    layers fused into a :class:`FusedInt4`, which holds its own table: no second copy)."""
    fused = {id(p) for layer in layers for pack in layer.fused for p in pack.parts}
    for module in model.modules():
        build = getattr(module, "kernel_weight", None)
        if callable(build) and id(module) not in fused:
            build()


@dataclass
class Generation:
    """What :func:`generate` returns: new tokens and text, why it stopped, and timings."""

    tokens: list[int]
    text: str
    finish_reason: str
    prompt_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: tokens after the first / decode time (the first comes from prefill)."""
        return (len(self.tokens) - 1) / self.decode_s if len(self.tokens) > 1 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.tokens),
                "prefill_s": round(self.prefill_s, 4), "decode_s": round(self.decode_s, 4),
                "tokens_per_s": round(self.tokens_per_s, 2)}


def check_request(prompt_len: int, max_new_tokens: int, limit: int) -> None:
    """One-line errors for a request that cannot run, before any work."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise DecodeInputError(f"max_tokens must be a positive integer, got {max_new_tokens!r}")
    if max_new_tokens > MAX_NEW_TOKENS:
        raise DecodeInputError(f"max_tokens {max_new_tokens} is over the limit of {MAX_NEW_TOKENS}")
    if prompt_len < 1:
        raise DecodeInputError("the prompt is empty (no tokens)")
    if prompt_len + max_new_tokens > limit:
        raise DecodeInputError(f"prompt ({prompt_len} tokens) + max_tokens ({max_new_tokens}) is over the "
                               f"model's context of {limit} positions")


def generate(decoder: Decoder, tokenizer: Any, ids: list[int], max_new_tokens: int,
             sampling: Sampling | None = None, cache: StaticKVCache | None = None) -> Generation:
    """Generate up to ``max_new_tokens`` after ``ids`` (batch 1), stopping at EOS or a stop string."""
    sampling = sampling or Sampling()
    check_request(len(ids), max_new_tokens, decoder.max_positions)
    cache = cache or decoder.new_cache(1, len(ids) + max_new_tokens)
    if len(ids) + max_new_tokens > cache.max_len:
        raise DecodeInputError(f"prompt ({len(ids)}) + max_tokens ({max_new_tokens}) is over the cache's "
                               f"{cache.max_len} positions")
    gen, eos = sampling.generator(), tokenizer.eos_token_id
    started = time.perf_counter()
    token = next_tokens(decoder.prefill(cache, 0, ids)[None], sampling, gen)  # (1,)
    prefilled = time.perf_counter()
    out: list[int] = []
    reason = "length"
    while True:
        value = int(token[0])
        if value == eos:
            reason = "stop"
            break
        out.append(value)
        if sampling.stop and find_stop(tokenizer.decode(out, skip_special_tokens=True), sampling.stop) is not None:
            reason = "stop"
            break
        if len(out) >= max_new_tokens:
            break
        token = next_tokens(decoder.step(cache, token), sampling, gen)
    done = time.perf_counter()
    text = tokenizer.decode(out, skip_special_tokens=True)
    cut = find_stop(text, sampling.stop) if sampling.stop else None
    text = text if cut is None else text[:cut]
    return Generation(out, text, reason, len(ids), prefilled - started, done - prefilled)
