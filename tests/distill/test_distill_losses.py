"""Distillation losses against hand computations."""
import math

import pytest
import torch

from autolite.distill.losses import (DistillLoss, embedding_cosine_loss, hidden_mse_loss, kd_loss,
                                     relation_loss)


def test_kd_loss_equals_hand_computed_value():
    s = torch.tensor([[1.0, 2.0, 0.0]])
    t = torch.tensor([[2.0, 0.0, 1.0]])
    temp, alpha = 2.0, 0.3
    ps = [math.exp(v / temp) for v in (1.0, 2.0, 0.0)]
    pt = [math.exp(v / temp) for v in (2.0, 0.0, 1.0)]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    kl = sum(b * math.log(b / a) for a, b in zip(ps, pt))
    exp_s = [math.exp(v) for v in (1.0, 2.0, 0.0)]
    ce = -math.log(exp_s[2] / sum(exp_s))
    expected = alpha * temp ** 2 * kl + (1 - alpha) * ce
    got = kd_loss(s, t, temperature=temp, alpha=alpha, labels=torch.tensor([2]))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(s, t, temperature=temp).item() == pytest.approx(temp ** 2 * kl, rel=1e-6)


def test_kd_loss_zero_for_identical_logits_and_masks_positions():
    logits = torch.randn(2, 5, 7)
    assert kd_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    other = logits.clone()
    other[:, -1] += 5.0  # only the masked-out last position differs
    mask = torch.ones(2, 5)
    mask[:, -1] = 0
    assert kd_loss(logits, other, mask=mask).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_mse_with_projection_and_cosine():
    s = torch.randn(2, 4, 8)
    proj = torch.nn.Linear(8, 16, bias=False)
    t = proj(s).detach()
    mask = torch.ones(2, 4)
    assert hidden_mse_loss(s, t, proj, mask).item() == pytest.approx(0.0, abs=1e-8)
    assert embedding_cosine_loss(t, 3 * t, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert embedding_cosine_loss(t, -t, mask).item() == pytest.approx(2.0, abs=1e-6)


def test_relation_loss_handles_different_widths():
    x = torch.randn(2, 5, 16)
    mask = torch.ones(2, 5)
    assert relation_loss(x, x, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert relation_loss(torch.randn(2, 5, 8), x, mask).item() > 0.01


def test_distill_loss_learns_projection_when_widths_differ():
    loss = DistillLoss("encoder", 8, 16, kd=0.0, hidden=1.0, cosine=1.0)
    assert loss.projection is not None and loss.projection.weight.shape == (16, 8)
    s = {"hidden": torch.randn(2, 3, 8)}
    t = {"hidden": torch.randn(2, 3, 16)}
    total, parts = loss(s, t, torch.ones(2, 3))
    total.backward()
    assert set(parts) == {"hidden", "cosine"} and loss.projection.weight.grad is not None
