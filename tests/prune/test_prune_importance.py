"""Every importance ranks a planted redundant (zeroed) head / FFN neuron last."""
from __future__ import annotations

import pytest
import torch

from autolite.passes import PassContext
from autolite.prune.calib import calib_batches, calib_loss
from autolite.prune.importance import IMPORTANCE
from autolite.prune.structure import axis_tensors, head_groups, neuron_groups
from autolite.prune.surgery import remove_heads

TEXTS = ["The quick brown fox jumps over the lazy dog.", "It was the best of times, it was the worst.",
         "Call me Ishmael.", "Alice was beginning to get very tired of sitting by her sister on the bank."]
HEAD_METHODS = ["magnitude", "l2", "taylor", "head_mask", "wanda", "attention", "ablation"]
FFN_METHODS = ["magnitude", "l2", "taylor", "head_mask", "wanda"]


def _zero_unit(family, model, target, unit):
    """Zero every weight of head (KV group for GQA) / neuron ``unit`` in the first block."""
    group = (head_groups if target == "heads" else neuron_groups)(family, model)[0]
    if target == "heads":
        g, d = group.group_size, group.head_dim
        q_heads = list(range(unit * g, unit * g + g))
        kv_heads = [unit] if group.view.qkv is None else q_heads
        jobs = [(p, q_heads, 1 if p.axis == "emb" else d) for p in group.q_parts]
        jobs += [(p, kv_heads, d) for p in group.kv_parts]
    else:
        jobs = [(p, [unit], 1) for p in group.parts]
    with torch.no_grad():
        for part, units, width in jobs:
            for tensor, dim in axis_tensors(part):
                for u in units:
                    tensor.narrow(dim, part.offset + u * width, width).zero_()
    return group.key


_CACHE = {}


def _setup(load_model, name, bare=False, target=None, unit=None):
    """(model, family, batches, planted key), built once per combination (scoring leaves weights as they are)."""
    if (name, bare, target) not in _CACHE:
        model, tok, family = load_model(name)
        if bare:
            model = model.base_model
        batches = calib_batches(model, family, PassContext(tokenizer=tok, calib=TEXTS), samples=4, batch_size=4)
        key = _zero_unit(family, model, target, unit) if target else None
        _CACHE[(name, bare, target)] = (model, family, batches, key)
    return _CACHE[(name, bare, target)]


@pytest.mark.parametrize("method", HEAD_METHODS)
@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
def test_planted_head_ranks_last(method, name, load_model):
    model, family, batches, key = _setup(load_model, name, target="heads", unit=1)
    score = IMPORTANCE[method](model, family, batches, "heads")[key]
    g = head_groups(family, model)[0].group_size
    units = score.reshape(-1, g).sum(1)
    assert units.argmin() == 1, f"{method}: {units}"
    assert units[1] < units[[u for u in range(len(units)) if u != 1]].min()


@pytest.mark.parametrize("method", FFN_METHODS)
@pytest.mark.parametrize("name,bare", [("tiny-bert", False), ("tiny-llama", False), ("tiny-bert", True)])
def test_planted_neuron_ranks_last(method, name, bare, load_model):
    model, family, batches, key = _setup(load_model, name, bare, target="ffn", unit=5)
    score = IMPORTANCE[method](model, family, batches, "ffn")[key]
    assert score.argmin() == 5 and score[5] < torch.cat([score[:5], score[6:]]).min(), method


@pytest.mark.parametrize("name,bare", [("tiny-bert", False), ("tiny-bert", True), ("tiny-llama", False),
                                       ("tiny-t5", False)])
def test_calibration_loss_has_a_gradient(name, bare, load_model):
    """Taylor needs a loss whose gradient is not zero at the unpruned model (not self-distillation)."""
    model, tok, family = load_model(name)
    model = model.base_model if bare else model
    batches = calib_batches(model, family, PassContext(tokenizer=tok, calib=TEXTS), samples=4, batch_size=4)
    loss = calib_loss(model, family, batches[0])
    loss.backward()
    grad = family.layers(model)[0].ffn.down.weight.grad
    assert torch.isfinite(loss) and grad is not None and grad.abs().sum() > 0


def test_removing_a_zero_head_keeps_outputs(load_model):
    model, tok, family = load_model("tiny-bert")
    batches = calib_batches(model, family, PassContext(tokenizer=tok, calib=TEXTS), samples=4, batch_size=4)
    _zero_unit(family, model, "heads", 2)
    inputs = batches[0].inputs
    with torch.no_grad():
        before = model(**inputs).logits
        remove_heads(head_groups(family, model)[0], torch.tensor([0, 1, 3]))
        after = model(**inputs).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)
