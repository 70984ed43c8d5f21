"""Real-size checks (slow): BERT-base shrinks as the recipe claims; MiniLM keeps its embeddings with recovery."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

import autolite
from autolite.arch import base_model
from autolite.data import load_texts
from autolite.passes import PassContext

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "bert-prune-h40-f50.yaml"


@pytest.mark.slow
def test_bert_base_recipe_removes_40_percent_of_encoder_parameters():
    model, tok, family = autolite.load("random:bert-base")
    before = sum(p.numel() for p in base_model(model).encoder.parameters())
    small = autolite.compress(model, RECIPE, tokenizer=tok, family=family, calib=load_texts(None, "calib").texts[:16])
    after = sum(p.numel() for p in base_model(small).encoder.parameters())
    assert 1 - after / before >= 0.40
    assert small.config.intermediate_size == 1536


@pytest.mark.slow
def test_minilm_30_40_with_refit_and_recovery_keeps_embeddings():
    """Measured (shared, loaded CPU): plain cut 0.70; least-squares refit ~0.876; recovery on augmented calibration
    text (batch 16, lr 1e-4): 0.898 after 100 steps, 0.903 after 200 (of an 800-step schedule). The issue's 0.95 is
    not reached (see docs/BENCHMARKS.md, pruning section). About 10 minutes on 2 quiet cores."""
    import torch

    from autolite.prune import PruneFFN, PruneHeads

    torch.manual_seed(0)
    model, tok, family = autolite.load("minilm")
    calib, held = load_texts(None, "calib"), load_texts(None, "heldout")
    ctx = PassContext(family=family, tokenizer=tok, calib=calib.texts)
    ctx.teacher = model
    recipe = [PruneHeads(ratio=0.3, importance="taylor"),
              PruneFFN(ratio=0.4, importance="taylor", recover_steps=200, recover_lr=1e-4)]
    small = autolite.compress(copy.deepcopy(model), recipe, tokenizer=tok, family=family, ctx=ctx)
    assert autolite.evaluate(small, tok, reference=model, data=held, family=family)["cosine"] >= 0.885
