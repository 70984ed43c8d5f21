"""``autolite bench`` of a decoder: decode tokens/s from autolite's own decode loop."""
import json

import pytest

import autolite
from autolite.errors import UnsupportedArchitectureError
from autolite.eval.compare import decode_speed
from autolite.quant import WeightOnly


def test_decode_speed_times_both_models_for_their_full_length(tiny_llama):
    model, tok, family = tiny_llama
    small = autolite.compress(model, [WeightOnly(bits=4, group_size=32)])
    eos = tok.eos_token_id
    result = decode_speed({"baseline": model, "candidate": small}, tok, family, tokens=5, runs=2, compile=False)
    assert tok.eos_token_id == eos  # restored after the EOS-free timing
    assert result["new_tokens"] == 5 and result["compiled"] is False and result["speedup"] > 0
    for name in ("baseline", "candidate"):
        assert len(result[name]["samples"]) == 2 and result[name]["tokens_per_s"] > 0


def test_decode_speed_rejects_an_encoder(tiny_bert):
    model, tok, family = tiny_bert
    with pytest.raises(UnsupportedArchitectureError, match="Llama-like decoders and GPT-2"):
        decode_speed({"baseline": model}, tok, family, tokens=2, runs=1, compile=False)


@pytest.mark.slow
def test_cli_bench_of_a_decoder_prints_decode_tokens_per_s(tmp_path, run_cli):
    """The verb end to end (compiles the decode step of both models: slow on 2 busy cores)."""
    out_file = tmp_path / "bench.json"
    code, out, err = run_cli("bench", "random:tiny-llama", "--recipe", "w4g64", "--batch", "1", "--seq", "16",
                             "--runs", "5", "--warmup", "1", "--decode-tokens", "8", "--json", str(out_file))
    assert code == 0, err
    decode = json.loads(out_file.read_text())["decode"]
    assert decode["new_tokens"] == 8 and decode["compiled"] and decode["candidate"]["tokens_per_s"] > 0
    assert "decode, batch 1, 8 greedy tokens" in " ".join(out.split())
