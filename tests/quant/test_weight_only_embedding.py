"""INT8 per-row embedding and output head of the weight-only pass: numerics, one tied copy, round trips."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autolite
from autolite.passes import applied_recipe
from autolite.eval.forward import run_model, tokenize
from autolite.quant.embedding import Int8Embedding, TiedInt8Head
from autolite.quant.layers import WeightOnlyInt8Linear
from autolite.quant.weight_only import WeightOnly

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Call me Ishmael.", "A short one."]


@pytest.fixture
def embedding():
    torch.manual_seed(0)
    emb = nn.Embedding(1000, 128)
    emb.weight.data[3] *= 40.0  # one large row must not hurt the others (per-row scales)
    return emb


def test_int8_lookup_matches_fp32(embedding):
    layer = Int8Embedding.from_float(embedding)
    ids = torch.randint(0, 1000, (4, 9))
    ids[0, 0] = 3
    got, want = layer(ids), embedding(ids)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert F.cosine_similarity(got.reshape(-1, 128), want.reshape(-1, 128)).min() > 0.9995
    assert layer.weight_int8.dtype == torch.int8 and layer.weight_scale.shape == (1000,)


@pytest.mark.parametrize("rows", [1, 8, 40])  # <= kernel_max_rows: _weight_int8pack_mm; above: INT8-weight GEMM
def test_tied_head_matches_fp32(embedding, rows):
    head = TiedInt8Head(Int8Embedding.from_float(embedding), kernel_max_rows=8)
    x = torch.randn(rows, 128)
    got, want = head(x), x @ embedding.weight.T
    assert got.shape == (rows, 1000)
    assert F.cosine_similarity(got, want).min() > 0.999
    assert torch.equal(got.argmax(-1), want.argmax(-1)) or F.cosine_similarity(got, want).min() > 0.9999


def _logits(model, tok, family):
    return run_model(model, family, tokenize(tok, TEXTS, 32)).logits


def test_tied_model_stores_one_int8_copy_and_round_trips(load_model, tmp_path):
    model, tok, family = load_model("tiny-gpt2")
    assert model.lm_head.weight is model.transformer.wte.weight
    reference = _logits(model, tok, family)
    quantized = autolite.compress(copy.deepcopy(model), [WeightOnly(bits=8, group_size=None, embedding=True)],
                                  tokenizer=tok, family=family)
    assert isinstance(quantized.transformer.wte, Int8Embedding) and isinstance(quantized.lm_head, TiedInt8Head)
    assert quantized.lm_head.embedding is quantized.transformer.wte
    keys = set(quantized.state_dict())
    assert "transformer.wte.weight_int8" in keys and not [k for k in keys if k.startswith("lm_head")]
    logits = _logits(quantized, tok, family)
    assert F.cosine_similarity(logits.flatten(0, 1), reference.flatten(0, 1)).mean() > 0.99
    autolite.save_model(quantized, tok, tmp_path / "w8e")
    loaded, tok2, family2 = autolite.load(tmp_path / "w8e")
    assert loaded.lm_head.embedding is loaded.transformer.wte
    assert torch.equal(logits, _logits(loaded, tok2, family2))
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():  # decoding: the head runs the INT8 kernel, one row per step
        assert torch.equal(quantized.generate(ids, max_new_tokens=4, do_sample=False),
                           loaded.generate(ids, max_new_tokens=4, do_sample=False))


def test_untied_head_becomes_int8_linear_and_file_shrinks(load_model, tmp_path):
    model, tok, family = load_model("tiny-llama")
    autolite.save_model(model, tok, tmp_path / "fp32")
    config = WeightOnly(bits=4, group_size=32, symmetric=False, embedding=True)
    quantized = autolite.compress(copy.deepcopy(model), [config], tokenizer=tok, family=family)
    recorded = applied_recipe(quantized).passes[0]  # the handler records its layers in a copy of config
    assert recorded.embedding_layers == {"model.embed_tokens": "embedding", "lm_head": "head"}
    assert isinstance(quantized.lm_head, WeightOnlyInt8Linear)
    autolite.save_model(quantized, tok, tmp_path / "w4e")
    sizes = {n: sum(p.stat().st_size for p in (tmp_path / n).glob("*.safetensors")) for n in ("fp32", "w4e")}
    assert sizes["fp32"] / sizes["w4e"] > 3.5  # embeddings dominate the tiny model: INT8 rows make it shrink
    loaded, tok2, family2 = autolite.load(tmp_path / "w4e")
    assert torch.equal(_logits(quantized, tok, family), _logits(loaded, tok2, family2))
