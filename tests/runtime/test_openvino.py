"""OpenVINO backend: FP32 matches torch, default precision and NNCF INT8 keep fidelity, save -> load rebuilds
the same model (bit-identical), the torch weights are memory-mapped (no second resident copy), clear errors;
the T5 encoder stack alone runs in OpenVINO and ONNX Runtime and reloads identical."""
from __future__ import annotations

import copy
import sys

import pytest
import torch
import transformers

import autolite
from autolite.arch import family_of
from autolite.errors import BackendUnavailableError
from autolite.passes import PassContext
from autolite.runtime.external import MAPPED_ATTR, runner_of
from autolite.runtime.openvino import OpenVino, is_openvino
from autolite.runtime.ort import OnnxRuntime

pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'autolite[peers]'")


def _padded(tok, texts):
    return tok(texts, return_tensors="pt", padding=True)


def test_fp32_matches_torch_with_padding_and_weights_are_mapped(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    ov_model = autolite.compress(copy.deepcopy(model), [OpenVino(precision="fp32")], tokenizer=tok, family=family)
    assert is_openvino(ov_model)
    batch = _padded(tok, texts)
    with torch.no_grad():
        ref, got = model(**batch), ov_model(**batch)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    mapped = getattr(ov_model, MAPPED_ATTR)
    weight = ov_model.bert.encoder.layer[0].attention.self.query.weight
    assert weight.untyped_storage().data_ptr() in mapped  # read from disk, not a resident copy
    torch.testing.assert_close(weight, model.bert.encoder.layer[0].attention.self.query.weight, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["auto", "int8"])
def test_fidelity_and_reload_is_identical(load_model, texts, tmp_path, cache_dir, precision):
    pytest.importorskip("nncf", reason="NNCF is an optional extra: pip install 'autolite[peers]'")
    model, tok, family = load_model("tiny-bert")
    ctx = PassContext(family=family, tokenizer=tok, calib=texts)
    ov_model = autolite.compress(copy.deepcopy(model), [OpenVino(precision=precision)], tokenizer=tok,
                                 family=family, ctx=ctx)
    assert any("forward runs in OpenVINO" in note for note in ctx.notes)
    assert autolite.evaluate(ov_model, tok, reference=model, data=texts, family=family)["cosine"] > 0.99
    batch = _padded(tok, texts)
    with torch.no_grad():
        before = ov_model(**batch).logits
    autolite.save_model(ov_model, tok, tmp_path / "ov")
    for ir in cache_dir.glob("openvino/*.xml"):
        ir.unlink()  # force the rebuild from the stored FP32 weights (and recorded calibration ids)
    loaded, _, _ = autolite.load(tmp_path / "ov")
    assert is_openvino(loaded)
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).logits)


def test_static_shape_pads_near_inputs_and_compiles_the_others_dynamically(load_model, texts):
    model, tok, family = load_model("tiny-bert")
    ctx = PassContext(family=family, tokenizer=tok, calib=texts, shape=(4, 16))
    static = autolite.compress(copy.deepcopy(model), [OpenVino(precision="fp32", static=True)], tokenizer=tok,
                               family=family, ctx=ctx)
    assert any("static shape 4 x 16" in note for note in ctx.notes)
    runner = runner_of(static)

    def tokens(rows: int, length: int):
        return tok((texts * rows)[:rows], return_tensors="pt", padding="max_length", truncation=True,
                   max_length=length)
    with torch.no_grad():
        near = tokens(4, 14)  # fills 88% of the shape: padded up to it
        torch.testing.assert_close(static(**near).logits, model(**near).logits, atol=1e-4, rtol=1e-4)
        assert runner.fallback is None
        for batch in (tokens(1, 8), tokens(6, 24)):  # much smaller, larger: the dynamic compile
            torch.testing.assert_close(static(**batch).logits, model(**batch).logits, atol=1e-4, rtol=1e-4)
    assert runner.fallback is not None


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_streams_each_run_a_share_of_the_rows(load_model, texts, static):
    model, tok, family = load_model("tiny-bert")
    ctx = PassContext(family=family, tokenizer=tok, calib=texts, shape=(4, 16))
    built = autolite.compress(copy.deepcopy(model), [OpenVino(precision="fp32", static=static, streams=2)],
                              tokenizer=tok, family=family, ctx=ctx)
    assert any("2 streams" in note for note in ctx.notes) and len(runner_of(built).requests) == 2
    with torch.no_grad():
        for batch in (_padded(tok, texts[:3]), _padded(tok, texts[:1])):  # 2 + 1 rows, then 1 row on one stream
            torch.testing.assert_close(built(**batch).logits, model(**batch).logits, atol=1e-4, rtol=1e-4)


def test_static_shape_needs_a_shape(load_model):
    from autolite.errors import RecipeError

    model, tok, family = load_model("tiny-bert")
    with pytest.raises(RecipeError, match="shape"):
        autolite.compress(model, [OpenVino(precision="fp32", static=True)], tokenizer=tok, family=family)
    with pytest.raises(RecipeError, match="shape"):
        OpenVino(shape=[0, 128])
    with pytest.raises(RecipeError, match="streams"):
        OpenVino(streams=0)


def _t5_encoder(load_model):
    """The encoder stack of tiny-t5 alone (``T5EncoderModel`` with its weights), as peers.py times it."""
    full, tok, _ = load_model("tiny-t5")
    encoder = transformers.T5EncoderModel(full.config)
    encoder.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(("shared.", "encoder."))},
                            strict=False)
    return encoder.eval(), tok


@pytest.mark.parametrize("config", [OpenVino(precision="int8"), OnnxRuntime(precision="int8")],
                         ids=["openvino-int8", "onnxruntime-int8"])
def test_t5_encoder_stack_runs_in_the_engines_and_reloads_identical(load_model, texts, tmp_path, config):
    pytest.importorskip("nncf", reason="NNCF is an optional extra: pip install 'autolite[peers]'")
    encoder, tok = _t5_encoder(load_model)
    family = family_of(encoder)
    assert (family.name, family.kind) == ("t5-encoder", "encoder")
    built = autolite.compress(copy.deepcopy(encoder), [config], tokenizer=tok, family=family,
                              ctx=PassContext(family=family, tokenizer=tok, calib=texts))
    assert runner_of(built) is not None
    assert autolite.evaluate(built, tok, reference=encoder, data=texts, family=family)["cosine"] > 0.99
    batch = _padded(tok, texts)
    with torch.no_grad():
        before = built(**batch).last_hidden_state
    autolite.save_model(built, tok, tmp_path / "t5-encoder")
    loaded, _, loaded_family = autolite.load(tmp_path / "t5-encoder")
    assert loaded_family.kind == "encoder" and runner_of(loaded) is not None
    with torch.no_grad():
        assert torch.equal(before, loaded(**batch).last_hidden_state)


def test_decoder_is_refused_clearly(load_model):
    model, tok, family = load_model("tiny-llama")
    with pytest.raises(BackendUnavailableError, match="encoders only"):
        autolite.compress(model, [OpenVino()], tokenizer=tok, family=family)


def test_missing_openvino_is_a_clear_error(load_model, monkeypatch):
    model, tok, family = load_model("tiny-bert")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendUnavailableError, match="autolite\\[peers\\]"):
        autolite.compress(model, [OpenVino()], tokenizer=tok, family=family)


def test_bad_precision_is_a_recipe_error():
    from autolite.errors import RecipeError

    with pytest.raises(RecipeError, match="openvino precision"):
        OpenVino(precision="int4")
