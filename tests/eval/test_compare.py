"""``autolite bench`` of a decoder: decode tokens/s from autolite's own decode loop."""
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
