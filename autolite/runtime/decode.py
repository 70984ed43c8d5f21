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


def _llama_layer(layer: nn.Module) -> Layer:
    attn, mlp = layer.self_attn, layer.mlp

    def qkv(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)

    if hasattr(mlp, "gate_up_proj"):  # GLM: gate and up in one matrix
        def ffn(h: torch.Tensor) -> torch.Tensor:
            gate, up = mlp.gate_up_proj(h).chunk(2, dim=-1)
            return mlp.down_proj(mlp.activation_fn(gate) * up)
    else:
        def ffn(h: torch.Tensor) -> torch.Tensor:
            return mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))

    return Layer(layer.input_layernorm, layer.post_attention_layernorm, qkv, attn.o_proj, ffn,
                 getattr(attn, "q_norm", None), getattr(attn, "k_norm", None))


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

    def __init__(self, model: nn.Module, family: ArchSpec, *, compile: bool = True, prefill_chunk: int = 64) -> None:
        if family.kind != "decoder" or family.name not in self.FAMILIES:
            raise UnsupportedArchitectureError(f"the decode loop runs Llama-like decoders and GPT-2, not {family.name}")
        self.model, self.family, self.prefill_chunk = model.eval(), family, prefill_chunk
        base, config = base_model(model), model.config
        self.is_gpt2 = family.name == "gpt2"
        self.layers = [_gpt2_layer(b) for b in base.h] if self.is_gpt2 else [_llama_layer(l) for l in base.layers]
        self.embed = base.wte if self.is_gpt2 else base.embed_tokens
        self.final_norm = base.ln_f if self.is_gpt2 else base.norm
        self.head = model.get_output_embeddings()
        views = family.layers(model)
        self.heads, self.kv_heads = views[0].attention.num_heads, views[0].attention.num_kv_heads
        self.head_dim = views[0].attention.head_dim
        self.max_positions = config.n_positions if self.is_gpt2 else config.max_position_embeddings
        self.dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
        self._rope = None if self.is_gpt2 else self._rope_table(base)
        _prepare_kernels(model)
        self._step = torch.compile(_own_code(self._forward), fullgraph=True) if compile else self._forward
        self.compiled = compile

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
                   v_cache: torch.Tensor) -> torch.Tensor:
        """Self-attention of ``h`` (B, T, E) at positions ``pos`` (B, T) over the cache views (B, nkv, W, hs),
        writing this call's K/V into them."""
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
        rows = torch.arange(b, device=h.device)[:, None]  # (B, 1)
        k_cache[rows, :, pos] = k.to(k_cache.dtype)  # (B, T, nkv, hs) into (B, nkv, S, hs)
        v_cache[rows, :, pos] = v.to(v_cache.dtype)
        mask = torch.arange(k_cache.shape[2], device=h.device)[None, None] <= pos[:, :, None]  # (B, T, W)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k_cache.to(q.dtype), v_cache.to(q.dtype),
                                             attn_mask=mask[:, None], enable_gqa=self.heads != self.kv_heads)
        return layer.o(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))  # (B, T, E)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor], vs: list[torch.Tensor]
                 ) -> torch.Tensor:
        """Logits (B, V) of the last position of ``ids`` (B, T) at positions ``pos`` (B, T); ``ks``/``vs``:
        per layer, the cache views (B, nkv, W, hs) of the rows' first W positions."""
        x = self.embed(ids)  # (B, T, E)
        if self.is_gpt2:
            x = x + self.model.transformer.wpe(pos)
        for layer, k_cache, v_cache in zip(self.layers, ks, vs):
            x = x + self._attention(layer, layer.norm1(x), pos, k_cache, v_cache)
            x = x + layer.mlp(layer.norm2(x))
        return self.head(self.final_norm(x[:, -1:]))[:, 0]  # (B, V)

    @staticmethod
    def _views(cache: StaticKVCache, rows: slice, end: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per layer, the cache views of ``rows`` over the first positions up to ``end`` (rounded up to a
        multiple of WINDOW; rows and window are marked dynamic so the compiled step is reused)."""
        window = min(cache.max_len, WINDOW * math.ceil(end / WINDOW))
        ks = [k[rows, :, :window] for k in cache.k]
        vs = [v[rows, :, :window] for v in cache.v]
        for t in ks + vs:
            torch._dynamo.maybe_mark_dynamic(t, 0)
            torch._dynamo.maybe_mark_dynamic(t, 2)
        return ks, vs

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
        logits = self._step(ids, pos, *self._views(cache, slice(0, rows), max(cache.lengths[:rows]) + 1))
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


def _prepare_kernels(model: nn.Module) -> None:
    """Build the packed layers' cached kernel tables now, so the compiled step only reads them."""
    for module in model.modules():
        build = getattr(module, "kernel_weight", None)
        if callable(build):
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
