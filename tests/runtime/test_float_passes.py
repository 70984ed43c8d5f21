import copy

import pytest
import torch

import autolite
from autolite.errors import BackendUnavailableError
from autolite.runtime import precision
from autolite.runtime.compile import Compile, is_compiled
from autolite.runtime.precision import Precision


@pytest.fixture
def no_native_low_precision(monkeypatch):
    monkeypatch.setattr(precision, "native_dtypes", lambda device: {"fp32"})


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_emulated_low_precision_keeps_fidelity(load_model, texts, dtype):
    model, tok, _ = load_model("tiny-bert")
    low = autolite.compress(copy.deepcopy(model), [Precision(dtype=dtype, on_unsupported="emulate")])
    assert next(low.parameters()).dtype == precision.DTYPES[dtype]
    assert autolite.evaluate(low, tok, reference=model, data=texts)["cosine"] > 0.99


def test_fallback_is_noted(load_model, no_native_low_precision):
    model, _, _ = load_model("tiny-bert")
    ctx = autolite.passes.PassContext()
    out = autolite.compress(model, [Precision(dtype="bf16")], ctx=ctx)
    assert next(out.parameters()).dtype == torch.float32
    assert any("fell back to FP32" in note for note in ctx.notes)


def test_fallback_can_be_forbidden(load_model, no_native_low_precision):
    model, _, _ = load_model("tiny-bert")
    with pytest.raises(BackendUnavailableError, match="not native"):
        autolite.compress(model, [Precision(dtype="fp16", on_unsupported="error")])


def test_auto_follows_the_probe(load_model, monkeypatch):
    from autolite.runtime import hardware

    choice = hardware.BackendChoice(device="cpu", float_dtype="bf16", int8_engine=None, reasons=[])
    monkeypatch.setattr(hardware, "choose_backend", lambda info: choice)
    model, _, _ = load_model("tiny-bert")
    out = autolite.compress(model, [Precision(dtype="auto")])
    assert next(out.parameters()).dtype == torch.bfloat16


def test_compile_matches_eager(load_model, texts):
    model, tok, _ = load_model("tiny-bert")
    compiled = autolite.compress(copy.deepcopy(model), [Compile(backend="inductor", freeze=True)])
    assert is_compiled(compiled)
    result = autolite.evaluate(compiled, tok, reference=model, data=texts[:2])
    assert result["cosine"] > 0.9999 and result["top1_agreement"] == 1.0
