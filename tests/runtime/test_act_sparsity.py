"""Activation skipping at decode: calibrated thresholds, the sparse matmul's exactness, record and replay."""
from __future__ import annotations

import pytest
import torch

import autolite
from autolite.errors import RecipeError
from autolite.runtime.act_sparsity import GRID, ActivationSparsity, ActSparseLinear, allocate, sparse_everywhere
from autolite.runtime.decode import Decoder, generate

CALIB = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst of times.",
         "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about."] * 4


@pytest.fixture(scope="module")
def sparse_llama():
    model, tok, family = autolite.load("random:tiny-llama")
    config = ActivationSparsity(sparsity=0.5, calib_tokens=512, calib_seq=32, allocation="sensitivity")
    small = autolite.compress(model, [config], calib=CALIB, tokenizer=tok, family=family)
    return model, small, tok, family


def test_every_block_linear_is_sparse_with_a_threshold(sparse_llama):
    _, small, _, _ = sparse_llama
    layers = {n: m for n, m in small.named_modules() if isinstance(m, ActSparseLinear)}
    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down per layer
    recorded = small.config.autolite["recipe"]["passes"][0]["thresholds"]
    assert set(recorded) == set(layers) and all(v > 0 for v in recorded.values())


def test_calibrated_thresholds_hit_the_target_sparsity(sparse_llama):
    _, small, tok, _ = sparse_llama
    seen: list[tuple[float, int]] = []  # (skipped fraction of the inputs, weights of the linear)

    def record(m: ActSparseLinear, args: tuple) -> None:
        seen.append((float((args[0].abs() <= m.threshold).float().mean()), m.weight_t.numel()))

    hooks = [m.register_forward_pre_hook(record) for m in small.modules() if isinstance(m, ActSparseLinear)]
    with torch.inference_mode():
        small(**tok(CALIB[:4], return_tensors="pt", padding=True))
    for hook in hooks:
        hook.remove()
    skipped = sum(frac * size for frac, size in seen) / sum(size for _, size in seen)
    assert skipped == pytest.approx(0.5, abs=0.1)  # of the weights, split unevenly over the linears
    assert len({round(frac, 1) for frac, _ in seen}) > 1


def test_allocate_meets_the_target_and_gives_robust_linears_more():
    grid = torch.tensor(GRID)
    errors = {"robust": grid.pow(3) * 0.01, "fragile": grid.pow(3), "big": grid.pow(3) * 0.1}
    sizes = {"robust": 100, "fragile": 100, "big": 400}
    shares = allocate(errors, sizes, 0.4)
    skipped = sum(shares[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert 0.4 <= skipped < 0.4 + 0.05 * max(sizes.values()) / sum(sizes.values()) + 1e-9
    assert shares["robust"] > shares["big"] > shares["fragile"]


def test_sparse_matmul_equals_masked_dense():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = ActSparseLinear.from_float(linear, threshold=0.5, max_rows=4)
    x = torch.randn(3, 64)
    masked = x * (x.abs() > 0.5)
    torch.testing.assert_close(layer(x), linear(masked), atol=1e-5, rtol=1e-5)
    one = x[:1]  # one row: its active inputs split into one bag per thread
    torch.testing.assert_close(layer(one), linear(masked[:1]), atol=1e-5, rtol=1e-5)
    nothing = torch.full((1, 64), 0.1)  # every input below the threshold: the bias only
    torch.testing.assert_close(layer(nothing), linear.bias.detach().unsqueeze(0), atol=1e-6, rtol=1e-6)
    big = torch.randn(10, 64)  # above max_rows: dense unless sparse_everywhere
    torch.testing.assert_close(layer(big), linear(big), atol=1e-5, rtol=1e-5)
    with sparse_everywhere(torch.nn.Sequential(layer)):
        torch.testing.assert_close(layer(big), linear(big * (big.abs() > 0.5)), atol=1e-5, rtol=1e-5)


def test_decode_runs_sparse_and_differs_only_by_the_skipped_inputs(sparse_llama):
    model, small, tok, family = sparse_llama
    ids = tok("The quick brown fox", add_special_tokens=False)["input_ids"]
    out = generate(Decoder(small, family, compile=False), tok, ids, 6)
    assert len(out.tokens) == 6
    with torch.inference_mode(), sparse_everywhere(small):  # the decode step's numerics, on the whole text
        logits = small(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()


def test_reload_replays_the_thresholds(sparse_llama, tmp_path):
    _, small, tok, family = sparse_llama
    autolite.save_model(small, tok, tmp_path / "out")
    again, _, _ = autolite.load(str(tmp_path / "out"))
    ids = tok("Call me Ishmael.", add_special_tokens=False)["input_ids"]
    a = generate(Decoder(small, family, compile=False), tok, ids, 6).tokens
    b = generate(Decoder(again, family, compile=False), tok, ids, 6).tokens
    assert a == b
    names = [n for n, m in again.named_modules() if isinstance(m, ActSparseLinear)]
    assert len(names) == 14


@pytest.mark.parametrize("kwargs, message", [({"sparsity": 1.0}, "sparsity"), ({"max_rows": 0}, "max_rows"),
                                             ({"thresholds": {"a": -1}}, "thresholds"),
                                             ({"allocation": "greedy"}, "allocation")])
def test_bad_configs(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        ActivationSparsity(**kwargs)


def test_refuses_encoders(tiny_bert):
    model, tok, family = tiny_bert
    with pytest.raises(RecipeError, match="decoders"):
        autolite.compress(model, [ActivationSparsity()], calib=CALIB, tokenizer=tok, family=family)
