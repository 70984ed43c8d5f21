"""GGUF export: autolite's INT4/INT8 codes land in ggml blocks unchanged (read back with gguf's own reader)."""
import importlib.util

import numpy as np
import pytest
import torch

import autolite
from autolite.export import UnsupportedExportError
from autolite.quant import WeightOnly
from autolite.quant.embedding import Int8Embedding
from autolite.quant.layers import WeightOnlyInt4Linear

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def small_llama():
    """A tiny Llama with a 384-token byte-level BPE vocabulary trained on the corpus (gguf's reader parses
    vocabularies slowly, so the bundled 30k WordPiece one would dominate these tests)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from autolite.data import corpus

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(corpus().texts, trainer)
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                               eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok),
                                      max_position_embeddings=256, tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(config).eval(), tok


def _permuted(name: str, weight: np.ndarray, head_dim: int) -> np.ndarray:
    """Llama q/k rows in llama.cpp's interleaved-RoPE order (what the exporter writes)."""
    if not name.endswith(("q_proj", "k_proj")):
        return weight
    heads = weight.shape[0] // head_dim
    return weight.reshape(heads, 2, head_dim // 2, -1).swapaxes(1, 2).reshape(weight.shape)


def _quantized_and_read(model, tok, path, symmetric: bool):
    quantized = autolite.compress(model, [WeightOnly(bits=4, group_size=32, symmetric=symmetric, embedding=True)])
    result = autolite.export(quantized, tok, path, format="gguf", float_type="f32", max_texts=2)
    reader = gguf.GGUFReader(str(path / "model.gguf"))
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == len(tok)
    return quantized, result, {t.name: t for t in reader.tensors}


def test_gguf_q4_1_and_q8_0_blocks_hold_our_codes(tmp_path, small_llama):
    model, tok = small_llama
    quantized, result, stored = _quantized_and_read(model, tok, tmp_path / "g", symmetric=False)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    checked = {"Q4_1": 0, "Q8_0": 0}
    for name, module in quantized.named_modules():
        if not isinstance(module, (WeightOnlyInt4Linear, Int8Embedding)):
            continue
        tensor = stored[f"{names.get_name(name)}.weight"]
        ours = _permuted(name, module.dequantize(torch.float32).numpy(), head_dim)
        theirs = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(ours.shape)
        if isinstance(module, Int8Embedding):  # Q8_0: same int8 codes, d = our (BF16) scale: exact
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q8_0
            np.testing.assert_array_equal(theirs, ours)
        else:  # Q4_1: same codes and d; only m = -scale * zero is rounded to F16 (half an F16 ulp)
            assert tensor.tensor_type == gguf.GGMLQuantizationType.Q4_1
            m = -module.weight_scale.float().numpy() * module.weight_zero.numpy()
            bound = np.repeat(np.abs(m - m.astype(np.float16).astype(np.float32)), 32, axis=1)
            assert np.all(np.abs(theirs - ours) <= _permuted(name, bound, head_dim) + 1e-12)
        checked[tensor.tensor_type.name] += 1
    assert checked == {"Q4_1": 14, "Q8_0": 1}
    assert "q4_1" in result.precision and result.validation.passed and "output.weight" in stored
    if importlib.util.find_spec("llama_cpp"):  # the round trip: llama.cpp runs our Q4_1/Q8_0 file
        assert "llama.cpp" in result.validation.against and result.validation.extra["top1_agreement"] > 0.95


def test_gguf_symmetric_int4_is_exact_q4_0(tmp_path, small_llama):
    """Symmetric INT4 (zero 8) is Q4_0's own form, and a group of 64 is two 32-blocks: nothing is rounded."""
    model, tok = small_llama
    quantized = autolite.compress(model, [WeightOnly(bits=4, group_size=64, symmetric=True)])
    result = autolite.export(quantized, tok, tmp_path / "g", format="gguf", max_texts=2)
    assert result.precision == "q4_0+float" and result.validation.passed
    assert any("max weight change 0" in note for note in result.notes)


def test_gguf_loads_in_llamacpp(tmp_path, small_llama):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed (pip install 'autolite[llamacpp]')")
    model, tok = small_llama
    result = autolite.export(model, tok, tmp_path / "g", format="gguf", float_type="f32", max_texts=3)
    v = result.validation
    assert "llama.cpp" in v.against and v.rel_l2 < 1e-3 and v.extra["top1_agreement"] > 0.99


def test_gguf_rejects_what_it_cannot_express(tmp_path, load_model):
    bert, tok, _ = load_model("tiny-bert")
    with pytest.raises(UnsupportedExportError, match="GGUF export supports llama, mistral, qwen2, gpt2"):
        autolite.export(bert, tok, tmp_path / "a", format="gguf")
    llama, tok, _ = load_model("tiny-llama")
    with pytest.raises(UnsupportedExportError, match="float_type must be one of"):
        autolite.export(llama, tok, tmp_path / "b", format="gguf", float_type="q2")
    dynamic = autolite.compress(llama, [autolite.quant.Int8Dynamic(fallback=False)])  # INT8 even where slower
    with pytest.raises(UnsupportedExportError, match="cannot express DynamicInt8Linear"):
        autolite.export(dynamic, tok, tmp_path / "c", format="gguf")
    assert list(tmp_path.iterdir()) == []


def test_gguf_rejects_layers_of_differing_shapes(tmp_path, small_llama):
    import copy

    model, tok = small_llama
    model = copy.deepcopy(model)
    mlp = model.model.layers[1].mlp  # layer 1's FFN pruned to 64 neurons, layer 0's kept at 128
    for linear in (mlp.gate_proj, mlp.up_proj):
        linear.weight.data = linear.weight.data[:64].clone()
    mlp.down_proj.weight.data = mlp.down_proj.weight.data[:, :64].clone()
    with pytest.raises(UnsupportedExportError, match="every layer the same shape"):
        autolite.export(model, tok, tmp_path / "g", format="gguf")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_gguf(tmp_path, run_cli):
    code, text, err = run_cli("export", "random:tiny-qwen2", "--format", "gguf", "--out", str(tmp_path / "g"),
                              "--max-texts", "2")
    assert code == 0, err
    assert "gguf" in text and (tmp_path / "g" / "model.gguf").is_file()
