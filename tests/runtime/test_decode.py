"""The decode loop against transformers' ``generate``, token by token, on tiny decoders."""
from __future__ import annotations

import pytest
import torch

import autolite
from autolite.errors import AutoliteError, UnsupportedArchitectureError
from autolite.runtime.decode import DecodeInputError, Decoder, generate
from autolite.runtime.sampling import Sampling, find_stop, held_back, next_tokens

PROMPT = "The quick brown fox jumps over the lazy dog and"


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2", "tiny-qwen2"])
def loaded(request):
    model, tok, family = autolite.load(f"random:{request.param}")
    return model, tok, family


def test_greedy_matches_hf_generate_token_by_token(loaded):
    model, tok, family = loaded
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    decoder = Decoder(model, family, compile=False, prefill_chunk=4)  # several prefill chunks
    got = generate(decoder, tok, ids, 24)
    assert got.tokens == _hf_greedy(model, ids, 24)
    assert got.finish_reason == "length" and got.prompt_tokens == len(ids)


def test_step_logits_match_hf_forward(loaded):
    model, tok, family = loaded
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    _assert_step_matches_hf(Decoder(model, family, compile=False), model, ids)


def _assert_step_matches_hf(decoder, model, ids):
    """The decoder's step after a prefill of ``ids[:-1]`` gives the HF forward's last logits."""
    cache = decoder.new_cache(1, 64)
    decoder.prefill(cache, 0, ids[:-1])
    logits = decoder.step(cache, torch.tensor(ids[-1:]))
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(logits[0], ref, atol=1e-4, rtol=1e-4)


def test_rows_at_different_positions_step_together(tiny_llama):
    model, tok, family = tiny_llama
    decoder = Decoder(model, family, compile=False)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in (PROMPT, "Call me Ishmael.")]
    cache = decoder.new_cache(2, 64)
    firsts = [int(decoder.prefill(cache, slot, p).argmax()) for slot, p in enumerate(prompts)]
    tokens, outs = torch.tensor(firsts), [[f] for f in firsts]
    for _ in range(8):
        tokens = decoder.step(cache, tokens).argmax(-1)
        for row, out in enumerate(outs):
            out.append(int(tokens[row]))
    for prompt, out in zip(prompts, outs):
        assert out == _hf_greedy(model, prompt, 9)


def test_sampling_is_seeded_and_top_p_tiny_is_greedy():
    logits = torch.randn(3, 50)
    greedy = next_tokens(logits, Sampling())
    assert torch.equal(next_tokens(logits, Sampling(temperature=1.0, top_p=1e-6, seed=1), torch.Generator()),
                       greedy)
    a = next_tokens(logits, Sampling(temperature=0.8, seed=3), Sampling(temperature=0.8, seed=3).generator())
    b = next_tokens(logits, Sampling(temperature=0.8, seed=3), Sampling(temperature=0.8, seed=3).generator())
    assert torch.equal(a, b)


def test_stop_strings():
    assert find_stop("hello world. Next", (".", "Next")) == 11
    assert find_stop("hello", ("x",)) is None
    assert held_back("the end<|e", ("<|end|>",)) == 3


def test_generate_cuts_at_stop_string(tiny_llama):
    model, tok, family = tiny_llama
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    decoder = Decoder(model, family, compile=False)
    full = generate(decoder, tok, ids, 12)
    word = full.text.split()[2]
    cut = generate(decoder, tok, ids, 12, Sampling(stop=(word,)))
    assert cut.finish_reason == "stop" and word not in cut.text and full.text.startswith(cut.text)


@pytest.mark.parametrize("n, message", [(0, "positive integer"), (10**6, "over the limit"),
                                        (600, "over the model's context")])
def test_bad_requests_are_one_line_errors(tiny_llama, n, message):
    model, tok, family = tiny_llama
    decoder = Decoder(model, family, compile=False)
    with pytest.raises(DecodeInputError, match=message):
        generate(decoder, tok, [5, 6, 7], n)


def test_prompt_longer_than_cache(tiny_llama):
    model, tok, family = tiny_llama
    decoder = Decoder(model, family, compile=False)
    with pytest.raises(DecodeInputError, match="cache"):
        generate(decoder, tok, list(range(5, 205)), 4, cache=decoder.new_cache(1, 128))


def test_bad_sampling_options():
    with pytest.raises(AutoliteError, match="top_p"):
        Sampling(top_p=0)
    with pytest.raises(AutoliteError, match="temperature"):
        Sampling(temperature=-1)


def test_encoders_are_refused(tiny_bert):
    model, _, family = tiny_bert
    with pytest.raises(UnsupportedArchitectureError):
        Decoder(model, family, compile=False)


def test_packed_int4_model_decodes_like_its_own_forward(tiny_llama):
    from autolite.quant import WeightOnly

    model, tok, family = tiny_llama
    model = autolite.compress(model, [WeightOnly(bits=4, group_size=32)], tokenizer=tok, family=family)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    got = generate(Decoder(model, family, compile=False), tok, ids, 8)
    assert got.tokens == _hf_greedy(model, ids, 8)


def test_fused_int4_pack_equals_the_separate_layers(tiny_llama):
    from autolite.quant import WeightOnly
    from autolite.runtime.decode import FusedInt4

    model, tok, family = tiny_llama
    model = autolite.compress(model, [WeightOnly(bits=4, group_size=32)], tokenizer=tok, family=family)
    decoder = Decoder(model, family, compile=False)
    assert all(len(layer.fused) == 2 for layer in decoder.layers)  # q/k/v and gate/up
    attn = model.model.layers[0].self_attn
    pack = decoder.layers[0].qkv
    assert isinstance(pack, FusedInt4) and attn.q_proj._kernel_weight is None  # no second kernel table
    for rows in (1, 3, 20):  # kernel path, and above kernel_max_rows the original layers
        h = torch.randn(1, rows, attn.q_proj.in_features)
        with torch.inference_mode():
            for got, layer in zip(pack(h), (attn.q_proj, attn.k_proj, attn.v_proj)):
                torch.testing.assert_close(got, layer(h), atol=1e-5, rtol=1e-5)


def test_int8_head_runs_on_the_int4_kernel_within_bf16_rounding(tiny_llama):
    from autolite.quant import WeightOnly
    from autolite.runtime.decode import NibbleInt8Head

    model, tok, family = tiny_llama
    model = autolite.compress(model, [WeightOnly(bits=4, group_size=32, embedding=True)], tokenizer=tok, family=family)
    decoder = Decoder(model, family, compile=False)
    head = model.get_output_embeddings()
    assert isinstance(decoder.head, NibbleInt8Head) and decoder.head.head is head
    for rows in (1, 3, 20):  # the kernel path, and above kernel_max_rows the original head
        h = torch.randn(1, rows, head.in_features)
        with torch.inference_mode():
            exact = h @ getattr(head, "embedding", head).dequantize().T  # FP32 products of the same INT8 weights
            got, int8_kernel = decoder.head(h), head(h)
        bf16 = 2 ** -8 * exact.abs().amax()  # both kernels round their outputs to BF16
        assert (got - exact).abs().max() <= 2 * bf16 and (int8_kernel - exact).abs().max() <= bf16
        if rows > head.kernel_max_rows:
            assert torch.equal(got, int8_kernel)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert generate(decoder, tok, ids, 8).tokens == _hf_greedy(model, ids, 8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_compiled_step_matches_hf(name):
    from autolite.quant import WeightOnly

    model, tok, family = autolite.load(f"random:{name}")
    model = autolite.compress(model, [WeightOnly(bits=4, group_size=32)], tokenizer=tok, family=family)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    decoder = Decoder(model, family, compile=True)
    for n in (12, 140):  # the second crosses an attention-window boundary (dynamic window)
        assert generate(decoder, tok, ids, n).tokens == _hf_greedy(model, ids, n)


def test_each_decoder_compiles_into_its_own_cache(tiny_llama):
    """Dynamo's recompile limit (8) is per code object: seven models in one process (the benchmark) must not
    share one (a fullgraph compile fails past the limit)."""
    model, _, family = tiny_llama
    first, second = Decoder(model, family), Decoder(model, family)
    codes = [d._step._torchdynamo_orig_callable.__code__ for d in (first, second)]
    assert codes[0] is not codes[1] and codes[0] is not Decoder._forward.__code__


def test_cpp_wrapper_step_falls_back_to_the_python_wrapper_when_it_fails(tiny_llama, monkeypatch):
    model, tok, family = tiny_llama
    decoder = Decoder(model, family, cpp_wrapper=True)

    def broken(*args):
        raise torch._dynamo.exc.BackendCompilerFailed(broken, RuntimeError("C++ compile error"), None)

    decoder._step = broken  # what a graph the C++ wrapper cannot build raises on its first call
    monkeypatch.setattr(decoder, "_compiled_step", lambda: decoder._step_forward)  # the Python-wrapper compile, eager here
    _assert_step_matches_hf(decoder, model, tok(PROMPT, add_special_tokens=False)["input_ids"])
    assert not decoder.cpp_wrapper


def test_generate_cli(run_cli, tmp_path):
    import json

    out = tmp_path / "g.json"
    code, stdout, stderr = run_cli("generate", "random:tiny-llama", "--prompt", PROMPT, "--max-tokens", "6",
                                   "--eager", "--json", str(out))
    assert code == 0, stderr
    data = json.loads(out.read_text())
    assert data["completion_tokens"] == 6 and data["text"].strip() in stdout and "tokens/s" in stderr


@pytest.mark.parametrize("args, message", [
    (["--max-tokens", "0"], "--max-tokens"), (["--max-tokens", "100000"], "over the limit"),
    (["--max-tokens", "600"], "context"), (["--top-p", "0"], "top_p"), (["--nucleus", "3"], "--nucleus")])
def test_generate_cli_bad_input(run_cli, args, message):
    code, _, stderr = run_cli("generate", "random:tiny-llama", "--prompt", PROMPT, "--eager", *args)
    assert code in (1, 2) and message in stderr and "Traceback" not in stderr
