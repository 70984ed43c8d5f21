import math

import torch

from autolite.eval import metrics
from autolite.eval.forward import mean_pool


def test_cosine_hand_computed():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert torch.allclose(metrics.cosine_per_row(a, b), torch.tensor([0.0, 1.0]))


def test_top1_agreement_with_mask():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    b = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [0.0, 5.0]]])
    assert metrics.top1_matches(a, b) == (1, 3)
    assert metrics.top1_matches(a, b, torch.tensor([[1, 0, 0]])) == (1, 1)


def test_next_token_nll_hand_computed():
    # vocab 2, sequence of 3 tokens: positions 0,1 predict tokens 1,2.
    logits = torch.log(torch.tensor([[[0.25, 0.75], [0.5, 0.5], [0.9, 0.1]]]))
    ids = torch.tensor([[0, 1, 0]])
    mask = torch.ones_like(ids)
    nll, count = metrics.next_token_nll(logits, ids, mask, shift=True)
    assert count == 2
    assert math.isclose(nll, -math.log(0.75) - math.log(0.5), rel_tol=1e-6)
    assert math.isclose(metrics.perplexity(nll, count), math.exp(nll / 2), rel_tol=1e-9)
    nll_noshift, count = metrics.next_token_nll(logits, ids, mask, shift=False)
    assert count == 3
    assert math.isclose(nll_noshift, -math.log(0.25) - math.log(0.5) - math.log(0.9), rel_tol=1e-6)


def test_masked_tokens_do_not_count():
    logits = torch.zeros(1, 3, 4)
    ids = torch.tensor([[1, 2, 3]])
    nll, count = metrics.next_token_nll(logits, ids, torch.tensor([[1, 1, 0]]))
    assert count == 1 and math.isclose(nll, math.log(4), rel_tol=1e-6)


def test_accuracy_and_mean_pool():
    assert metrics.accuracy_matches(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]),
                                    torch.tensor([1, 1, 1])) == (2, 3)
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.allclose(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_nan_is_reported():
    import pytest

    from autolite.errors import NumericsError
    with pytest.raises(NumericsError, match="NaN"):
        metrics.check_finite(torch.tensor([1.0, float("nan")]), "model logits")
