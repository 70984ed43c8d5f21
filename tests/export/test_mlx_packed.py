"""MLX export of autolite's own INT4/INT8 weights, as they are (no re-quantization)."""
import json

import numpy as np
import pytest
import torch

import autolite
from autolite.export import UnsupportedExportError
from autolite.export.mlx import compare_with_model
from autolite.quant import WeightOnly

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]' mlx-lm): MLX export untested")


def test_mlx_holds_our_int4_exactly(tmp_path, load_model):
    """Asymmetric INT4 g32 (+ INT8 embedding): MLX's dequantized weights equal ours and the logits match."""
    from mlx_lm import load

    from autolite.quant.layers import WeightOnlyInt4Linear

    model, tok, _ = load_model("tiny-llama")
    quantized = autolite.compress(model, [WeightOnly(bits=4, group_size=32, symmetric=False, embedding=True)])
    result = autolite.export(quantized, tok, tmp_path / "mlx", format="mlx", max_texts=3)
    assert result.precision == "autolite-w4g32+w8" and result.validation.rel_l2 < 1e-5
    config = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert config["quantization"]["model.layers.0.mlp.down_proj"] == {"group_size": 32, "bits": 4}
    assert config["quantization"]["model.embed_tokens"] == {"group_size": 64, "bits": 8}
    mlx_model, _ = load(str(tmp_path / "mlx"))
    layer = mlx_model.model.layers[0].self_attn.q_proj
    ours = quantized.model.layers[0].self_attn.q_proj
    assert isinstance(ours, WeightOnlyInt4Linear)
    theirs = mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=32, bits=4)
    np.testing.assert_array_equal(np.array(theirs), ours.dequantize(torch.float32).numpy())
    own = compare_with_model(tmp_path / "mlx", quantized, tok, max_texts=3)  # our INT4 on its packed kernels
    assert own.rel_l2 < 1e-3 and own.extra["top1_agreement"] > 0.99


def test_mlx_packed_rejects_bits_and_encoders(tmp_path, load_model):
    model, tok, _ = load_model("tiny-llama")
    quantized = autolite.compress(model, [WeightOnly(bits=8, group_size=None)])
    with pytest.raises(UnsupportedExportError, match="as they are for decoders only, without bits"):
        autolite.export(quantized, tok, tmp_path / "a", format="mlx", bits=4)
    bert, btok, _ = load_model("tiny-bert")
    with pytest.raises(UnsupportedExportError, match="as they are for decoders only"):
        autolite.export(autolite.compress(bert, [WeightOnly(bits=8, group_size=None)]), btok, tmp_path / "b",
                        format="mlx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.timeout(1800)  # GPTQ of 135M: ~1 min on 2 quiet cores, over 10 at lowest priority on busy ones
def test_mlx_smollm2_gptq_answers_as_our_int4(tmp_path):
    """SmolLM2 with the w4g64 preset (GPTQ, INT8 embedding) exported as it is: logits match our INT4 model's own
    forward (rel L2 < 1e-3) and mlx-lm's greedy tokens for the capital question are the ones our model gives."""
    from mlx_lm import load, stream_generate

    from autolite.export.validate import Tolerance

    model, tok, _ = autolite.load("smollm2")
    quantized = autolite.compress(model, "w4g64", tokenizer=tok)
    result = autolite.export(quantized, tok, tmp_path / "mlx", format="mlx", max_texts=8)
    assert result.validation.passed and result.validation.rel_l2 < 1e-3
    own = compare_with_model(tmp_path / "mlx", quantized, tok, tolerance=Tolerance(max_rel_l2=1e-3), max_texts=8)
    assert own.passed and own.rel_l2 < 1e-3
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False).input_ids
    with torch.no_grad():
        ours = quantized.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    mlx_model, mlx_tok = load(str(tmp_path / "mlx"))
    theirs = [r.token for r in stream_generate(mlx_model, mlx_tok, mx.array(ids), max_tokens=16)]
    assert "Paris" in tok.decode(ours) and theirs == ours[:len(theirs)] and len(theirs) >= 8, (theirs, ours)
