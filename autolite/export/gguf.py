"""GGUF export (llama.cpp): Llama-like decoders (llama, mistral, qwen2) and GPT-2, weights as autolite holds them.

Quantized weights are re-expressed, never re-quantized (:mod:`autolite.export.gguf_blocks`): INT4 group-wise
(RTN or GPTQ, ``w = scale * (q - zero)``) -> Q4_0 when every zero is 8, else Q4_1; INT8 per row -> Q8_0;
a group that is a multiple of 32 splits into 32-blocks sharing its scale and zero. Float matrices are
written as ``float_type`` (f16 | bf16 | f32), norms and biases as F32. Llama's q/k rows are permuted to
llama.cpp's interleaved RoPE layout (whole rows move, so quantized blocks stay intact).

Validation reads the file back (``gguf.GGUFReader`` + ``gguf.quants.dequantize``) and compares every tensor
with the model's own (dequantized) weights; with llama-cpp-python installed it also loads the file in
llama.cpp and compares next-token logits with the torch model.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import gguf
import torch

from autolite.errors import NumericsError
from autolite.export import gguf_blocks as blocks, llamacpp
from autolite.export.common import ExportResult, UnsupportedExportError, rope_theta
from autolite.export.validate import Validation
from autolite.io import atomic_dir

log = logging.getLogger(__name__)
FILE_NAME = "model.gguf"
FLOAT_TYPES = ("f16", "bf16", "f32")
ARCHES = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2", "gpt2": "GPT2"}
LLAMACPP_REL_L2 = 0.05  # llama.cpp quantizes activations to 8 bits for Q4/Q8 matmuls; layout bugs give ~1
DEFAULT_TEXTS = 8


def export_gguf(model: torch.nn.Module, tokenizer: Any, out_dir: str | Path, *, float_type: str = "f16",
                validate: bool = True, family: Any = None, overwrite: bool = False,
                max_texts: int | None = None) -> ExportResult:
    """Write ``out_dir/model.gguf`` and validate it (blocks decoded; logits in llama.cpp when installed)."""
    arch = check_gguf(model, float_type)
    tensors = blocks.collect(model, arch, float_type)  # every tensor converted (or an error) before writing
    vocab = _vocab(tokenizer, model.config)
    out_dir = Path(out_dir)
    result = ExportResult(path=out_dir, format="gguf", precision=blocks.precision_label(tensors))
    result.notes.extend(blocks.notes(tensors, float_type))
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        writer = gguf.GGUFWriter(str(tmp / FILE_NAME), gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch)])
        _write_hparams(writer, model.config, arch, tensors)
        _write_vocab(writer, vocab, tokenizer, len(vocab[0]))
        for t in tensors:
            writer.add_tensor(t.name, t.data, raw_dtype=t.raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        if validate:
            result.validation = _validate(tmp / FILE_NAME, tensors, model, tokenizer, max_texts, result.notes)
    return result


def check_gguf(model: torch.nn.Module, float_type: str) -> str:
    """The gguf ``MODEL_ARCH`` name for ``model``, or a one-line :class:`UnsupportedExportError`."""
    if float_type not in FLOAT_TYPES:
        raise UnsupportedExportError(f"GGUF float_type must be one of {', '.join(FLOAT_TYPES)}, got {float_type!r}")
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHES:
        raise UnsupportedExportError(f"GGUF export supports {', '.join(ARCHES)} decoders; '{model_type}' cannot be "
                                     "expressed for llama.cpp here: use 'hf', 'onnx' or 'mlx'")
    return ARCHES[model_type]


def _write_hparams(writer: Any, config: Any, arch: str, tensors: list) -> None:
    writer.add_name(getattr(config, "_name_or_path", "") or config.model_type)
    writer.add_file_type(blocks.file_type(tensors))
    writer.add_quantization_version(2)
    if arch == "GPT2":
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(rope_theta(config) or 10000.0)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != hidden:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)


def _vocab(tokenizer: Any, config: Any) -> tuple[list[str], list[int], str, str | None]:
    """(tokens by id, token types, ggml tokenizer model, pre-tokenizer) of a fast HF tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UnsupportedExportError("GGUF export needs a fast (tokenizers) tokenizer to write llama.cpp's vocab")
    spec = json.loads(backend.to_str())
    kind = spec["model"]["type"]
    if kind not in ("BPE", "WordPiece"):
        raise UnsupportedExportError(f"GGUF export writes byte-level BPE and WordPiece vocabularies; this "
                                     f"tokenizer is {kind}, which llama.cpp's vocab here cannot express")
    size = max(config.vocab_size, len(tokenizer))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {i: a for i, a in tokenizer.added_tokens_decoder.items()}
    specials = set(tokenizer.all_special_tokens)  # a property rebuilt on every access: read it once
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        special = i in added and added[i].special or token in specials
        tokens.append(_wordpiece_token(token) if kind == "WordPiece" and not special else token)
        types.append(gguf.TokenType.CONTROL if special else
                     gguf.TokenType.USER_DEFINED if i in added else gguf.TokenType.NORMAL)
    if kind == "WordPiece":
        return tokens, types, "bert", "default"
    return tokens, types, "gpt2", _bpe_pre(spec.get("pre_tokenizer") or {})


def _wordpiece_token(token: str) -> str:
    """llama.cpp's WPM vocab: word starts carry the phantom space, continuations lose their ``##``."""
    return token[2:] if token.startswith("##") else "\u2581" + token


def _bpe_pre(pre: dict) -> str:
    """llama.cpp's pre-tokenizer name: plain byte-level (GPT-2) or digits split one by one first (SmolLM)."""
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"]:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    raise UnsupportedExportError(f"GGUF export knows the GPT-2 and SmolLM byte-level pre-tokenizers; this "
                                 f"tokenizer's ({'+'.join(map(str, kinds))}) has no llama.cpp name here")


def _write_vocab(writer: Any, vocab: tuple, tokenizer: Any, size: int) -> None:
    tokens, types, model_name, pre = vocab
    writer.add_tokenizer_model(model_name)
    if pre:
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory(prefix="autolite-gguf-tok-") as tmp:
        tokenizer.save_pretrained(tmp)  # gguf's SpecialVocab reads merges, special ids, chat template from files
        special = gguf.SpecialVocab(tmp, load_merges=model_name == "gpt2", n_vocab=size,
                                   special_token_types=("bos", "eos", "unk", "sep", "pad"))
    special.add_to_gguf(writer, quiet=True)
    if model_name == "gpt2" and "bos" not in special.add_special_token:
        writer.add_add_bos_token(False)


def _validate(path: Path, tensors: list, model: torch.nn.Module, tokenizer: Any, max_texts: int | None,
              notes: list[str]) -> Validation:
    """Decode every tensor's blocks (exactness), then, when llama.cpp is installed, compare its logits."""
    result = blocks.check_blocks(tensors)
    log.info("gguf blocks: %s", result.line())
    if not result.passed:
        raise NumericsError(f"GGUF export failed its block check ({result.line()}); nothing was written")
    if not llamacpp.available():
        notes.append("llama-cpp-python is not installed: weights checked block by block, logits not compared "
                     "(pip install 'autolite[llamacpp]')")
        return result
    logits = llamacpp.validate_logits(path, model, tokenizer, DEFAULT_TEXTS if max_texts is None else max_texts,
                                      LLAMACPP_REL_L2)
    logits.extra.update({"weights_rel_l2": result.rel_l2, "weights_max_abs": result.max_abs})
    return logits

