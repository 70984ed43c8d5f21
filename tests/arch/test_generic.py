"""Any text model of transformers' registry built from nn.Linear runs the generic passes; family-specific
passes refuse it in one line that names the supported families (tiny models from configs, no hub)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import autolite
from autolite.arch import family_for, family_of
from autolite.errors import UnsupportedArchitectureError

_TOOL = Path(__file__).parents[2] / "tools" / "arch_coverage.py"
_spec = importlib.util.spec_from_file_location("arch_coverage", _TOOL)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)
KINDS = {"electra": "encoder", "albert": "encoder", "mpnet": "encoder", "deberta-v2": "encoder",
         "roformer": "encoder", "opt": "decoder", "gpt_neox": "decoder", "bloom": "decoder", "falcon": "decoder",
         "phi": "decoder", "gemma": "decoder", "stablelm": "decoder", "bart": "seq2seq", "pegasus": "seq2seq"}


@pytest.mark.parametrize("model_type", sorted(coverage.ARCHS))
def test_generic_model_runs_int8_dynamic(model_type, tokenizer):
    model = coverage.tiny_model(model_type)
    family = family_of(model)
    assert family.generic and family.kind == KINDS[model_type]
    small = autolite.compress(model, coverage.PASSES["int8-dynamic"], tokenizer=tokenizer)
    assert any(type(m).__name__ == "DynamicInt8Linear" for m in small.modules())
    assert coverage._fidelity(small, model, tokenizer) != "ran"  # compared with the FP32 model


def test_family_specific_pass_refuses_in_one_line_naming_the_families(tokenizer):
    model = coverage.tiny_model("opt")
    with pytest.raises(UnsupportedArchitectureError) as info:
        autolite.compress(model, [{"pass": "prune-heads", "ratio": 0.5}], tokenizer=tokenizer, calib=coverage.TEXTS)
    message = str(info.value)
    assert "\n" not in message and "'opt' is not supported; supported families: bert" in message
    assert "llama" in message and "int8-dynamic" in message


@pytest.mark.parametrize("model_type,recipe", [("electra", "weight-only w8"), ("opt", "weight-only w8"),
                                               ("gpt_neox", "weight-only w4g32"), ("bart", "weight-only w8")])
def test_generic_model_saves_and_reloads(model_type, recipe, tokenizer, tmp_path):
    """Including heads saved under another name (GPT-NeoX ``embed_out``) and embeddings tied to ``shared``
    (BART: the encoder/decoder copies are not stored)."""
    model = coverage.tiny_model(model_type)
    outcome = coverage._hf_roundtrip(model, tokenizer, coverage.PASSES[recipe])
    assert outcome.startswith("reloads as") and outcome.endswith("1.000"), outcome


def test_non_text_model_types_stay_unsupported():
    with pytest.raises(UnsupportedArchitectureError, match="supported families"):
        family_for("vit")
