import json

import pytest

import autolite
from autolite.export import UnsupportedExportError

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]' mlx-lm): MLX export untested")


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-distilbert", "tiny-gpt2"])
def test_mlx_fp32_matches_torch(tmp_path, load_model, fast_texts, preset):
    model, tok, _ = load_model(preset)
    result = autolite.export(model, tok, tmp_path / "mlx", format="mlx", max_texts=fast_texts)
    assert result.validation.cosine >= 0.999 and result.validation.rel_l2 < 1e-4
    if preset == "tiny-gpt2":  # decoders go through mlx-lm
        from mlx_lm import load

        mlx_model, _ = load(str(tmp_path / "mlx"))
        assert mlx_model(mx.array([[101, 2000, 102]])).shape == (1, 3, 30522)
        return
    from autolite.export import mlx_bert

    mlx_model, _ = mlx_bert.load(tmp_path / "mlx")
    hidden = mlx_model(mx.array([[101, 2000, 102]]))
    assert hidden.shape == (1, 3, 64)


def test_mlx_encoder_quantized_group_wise(tmp_path, load_model, fast_texts):
    model, tok, _ = load_model("tiny-roberta")
    result = autolite.export(model, tok, tmp_path / "mlx", format="mlx", bits=4, group_size=32, max_texts=fast_texts)
    config = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": 4}
    weights = mx.load(str(tmp_path / "mlx" / "model.safetensors"))
    q = weights["encoder.layer.0.attention.self.query.weight"]
    assert q.dtype == mx.uint32 and q.shape == (64, 64 * 4 // 32)  # 8 nibbles per uint32
    assert "encoder.layer.0.attention.self.query.scales" in weights
    v = result.validation  # rel L2 vs the torch twin (same weights through mx.quantize); cosine vs FP32
    assert v.rel_l2 < 1e-4 and 0.99 < v.cosine < 1.0 and abs(v.cosine - v.extra["intended_cosine"]) < 1e-4


def test_mlx_llama_4bit_loads_in_mlx_lm(tmp_path, load_model, fast_texts):
    model, tok, _ = load_model("tiny-llama")
    result = autolite.export(model, tok, tmp_path / "mlx", format="mlx", bits=4, group_size=64, max_texts=3)
    config = json.loads((tmp_path / "mlx" / "config.json").read_text())
    assert config["rope_theta"] == 10000.0 and config["quantization"]["bits"] == 4
    v = result.validation
    assert v.passed and v.rel_l2 < 1e-4 and v.extra["top1_agreement"] > 0.3 and v.cosine < 0.9999


def test_mlx_rejects_bad_bits_and_seq2seq(tmp_path, load_model):
    model, tok, _ = load_model("tiny-bert")
    with pytest.raises(UnsupportedExportError, match="bits 4 or 8 with group size 32 or 64"):
        autolite.export(model, tok, tmp_path / "a", format="mlx", bits=3)
    t5, tok5, _ = load_model("tiny-t5")
    with pytest.raises(UnsupportedExportError, match="seq2seq"):
        autolite.export(t5, tok5, tmp_path / "b", format="mlx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_mlx_minilm_cosine(tmp_path):
    model, tok, _ = autolite.load("minilm")
    result = autolite.export(model, tok, tmp_path / "mlx", format="mlx", max_texts=32)
    assert result.validation.texts == 32 and result.validation.cosine >= 0.999


@pytest.mark.slow
def test_mlx_smollm2_4bit_generates_sensible_text(tmp_path):
    """mlx-lm loads the 4-bit export and generates text the FP32 torch model finds likely (a wrong
    rope_theta or weight layout gives perplexity in the thousands; sensible text scores below 50)."""
    import torch
    from mlx_lm import generate, load

    model, tok, _ = autolite.load("smollm2")
    result = autolite.export(model, tok, tmp_path / "mlx", format="mlx", bits=4, group_size=64, max_texts=3)
    assert result.validation.passed and result.validation.rel_l2 < 1e-3
    mlx_model, mlx_tok = load(str(tmp_path / "mlx"))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = mlx_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = generate(mlx_model, mlx_tok, prompt=prompt, max_tokens=24)
    prompt_ids = tok(prompt, return_tensors="pt").input_ids
    full = tok(prompt + text, return_tensors="pt").input_ids
    assert full.shape[1] - prompt_ids.shape[1] >= 8, text
    with torch.no_grad():
        logprobs = torch.log_softmax(model(full).logits[0, prompt_ids.shape[1] - 1:-1], -1)
    nll = -logprobs.gather(-1, full[0, prompt_ids.shape[1]:, None]).mean()
    assert float(torch.exp(nll)) < 50, (text, float(torch.exp(nll)))
