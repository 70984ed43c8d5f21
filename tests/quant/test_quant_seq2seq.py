"""Quantized linears inside T5 (its feed-forward probes ``wo.weight.dtype``) and its shared embedding."""
import copy

import pytest
import torch

import autolite
from autolite.quant.int8 import Int8Dynamic
from autolite.quant.int8_static import Int8Static


RECIPES = {"int8-dynamic": [Int8Dynamic(fallback=False)], "int8-static": [Int8Static(fallback=False)],
           "w8": "w8", "w4g64": "w4g64"}


@pytest.mark.parametrize("name", list(RECIPES))
def test_t5_quantizes_and_reloads(name, load_model, texts, tmp_path):
    model, tok, family = load_model("tiny-t5")
    recipe = RECIPES[name]
    quantized = autolite.compress(copy.deepcopy(model), recipe, tokenizer=tok, family=family, calib=texts[:16])
    assert quantized.encoder.block[0].layer[1].DenseReluDense.wo.weight is None  # packed: no float weight
    result = autolite.evaluate(quantized, tok, reference=model, family=family, max_texts=8)
    assert result["cosine"] > 0.95
    autolite.save_model(quantized, tok, tmp_path / "t5")
    reloaded, _, _ = autolite.load(str(tmp_path / "t5"))
    batch = tok(texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = quantized(**batch, decoder_input_ids=batch["input_ids"][:, :4]).logits
        b = reloaded(**batch, decoder_input_ids=batch["input_ids"][:, :4]).logits
    assert torch.equal(a, b)


def test_shared_t5_embedding_stays_float(load_model, texts):
    model, tok, family = load_model("tiny-t5")
    quantized = autolite.compress(copy.deepcopy(model), "w8", tokenizer=tok, family=family, calib=texts[:8])
    assert isinstance(quantized.shared, torch.nn.Embedding)
    assert any("embedding kept float" in note for note in quantized.config.autolite["notes"])
