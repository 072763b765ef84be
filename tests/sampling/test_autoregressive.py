"""Autoregressive sampling of image tokens: the top-k and top-p sets, classifier-free
guidance on logits, the key/value cache equal to recomputation token for token (a cache
with wrong positions is caught), priming keeps the given codes, bad options refused."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model
from hirune.models.dalle import KVCache
from hirune.sampling.autoregressive import guided_logits, sample_image_tokens, top_k_filter, top_p_filter

L, N = 4, 9


def _model():
    torch.manual_seed(0)
    return build_model("dalle", text_vocab=10, text_len=L, num_codes=12, image_len=N, width=16, depth=2,
                       heads=2).double().eval()


def _text(B=4):
    return torch.randint(1, 10, (B, L), generator=torch.Generator().manual_seed(5))


def _kept(logits):
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.9, 2.5])
    assert _kept(top_k_filter(logits, 1)) == {5}
    assert _kept(top_k_filter(logits, 3)) == {1, 3, 5}
    assert _kept(top_k_filter(logits, 0)) == set(range(6)) == _kept(top_k_filter(logits, 6))
    kept = top_k_filter(logits, 2)
    assert torch.equal(kept[[1, 5]], logits[[1, 5]])          # the kept logits are unchanged
    rows = top_k_filter(torch.stack([logits, -logits]), 2)    # row by row
    assert _kept(rows[0]) == {1, 5} and set(torch.isfinite(rows[1]).nonzero().flatten().tolist()) == {0, 2}
    with pytest.raises(ValueError, match="top_k must be >= 0"):
        top_k_filter(logits, -1)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])         # sorted: 1 (0.4), 3 (0.3), 4 (0.15), 2, 0
    logits = probs.log()
    assert _kept(top_p_filter(logits, 0.3)) == {1}            # 0.4 >= 0.3 alone
    assert _kept(top_p_filter(logits, 0.4)) == {1}            # exactly p: enough
    assert _kept(top_p_filter(logits, 0.5)) == {1, 3}         # 0.4 < 0.5 <= 0.7
    assert _kept(top_p_filter(logits, 0.85)) == {1, 3, 4}     # 0.85 = 0.4 + 0.3 + 0.15
    assert _kept(top_p_filter(logits, 0.86)) == {1, 2, 3, 4}
    assert _kept(top_p_filter(logits, 1.0)) == set(range(5))
    # brute force over random rows: the kept set is the shortest prefix of the sorted probabilities reaching p
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g, dtype=torch.float64)
    for row in x:
        p = float(torch.rand((), generator=g, dtype=torch.float64))
        order = row.softmax(-1).sort(descending=True)
        size = int((order.values.cumsum(0) < p).sum()) + 1
        assert _kept(top_p_filter(row, p)) == set(order.indices[:size].tolist())
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            top_p_filter(logits, bad)


def test_cfg_on_logits_is_uncond_plus_scale_times_the_difference():
    cond, uncond = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0), torch.tensor([3.0, -8.0, 0.5]))
    assert torch.equal(guided_logits(cond, uncond, 1.0), cond) and torch.equal(guided_logits(cond, uncond, 0.0), uncond)


@pytest.mark.parametrize("options", [{}, {"top_k": 4, "temperature": 0.7}, {"top_p": 0.8, "scale": 3.0}])
def test_the_cache_samples_the_same_tokens_as_recomputation(options):
    model, text = _model(), _text()
    null = torch.tensor([[1, 0, 0, 0]])
    kw = {"null_text": null, **options}
    with_cache = sample_image_tokens(model, text, N, generator=torch.Generator().manual_seed(3), **kw)
    without = sample_image_tokens(model, text, N, use_cache=False, generator=torch.Generator().manual_seed(3), **kw)
    assert with_cache.shape == (4, N) and torch.equal(with_cache, without)


class _WrongPositions(KVCache):
    """A broken cache that claims one position fewer than it holds."""

    @property
    def length(self) -> int:
        return max(0, super().length - 1)


def test_a_cache_with_wrong_positions_is_caught():
    model, text = _model(), _text()
    model.new_cache = _WrongPositions
    broken = sample_image_tokens(model, text, N, generator=torch.Generator().manual_seed(3))
    without = sample_image_tokens(model, text, N, use_cache=False, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(broken, without)


def test_priming_keeps_the_given_codes_bitwise():
    model, text = _model(), _text()
    prime = torch.randint(0, 12, (4, 3), generator=torch.Generator().manual_seed(9))
    codes = sample_image_tokens(model, text, N, prime=prime, generator=torch.Generator().manual_seed(1))
    assert codes.shape == (4, N) and torch.equal(codes[:, :3], prime)
    again = sample_image_tokens(model, text, N, prime=prime, use_cache=False,
                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(codes, again)
    with pytest.raises(ValueError, match=r"prime must be \(B=4, K <= 9\)"):
        sample_image_tokens(model, text, N, prime=torch.zeros(4, N + 1, dtype=torch.long))


@pytest.mark.parametrize("options, match", [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"top_k": -2}, "top_k must be >= 0"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"scale": 2.0}, "needs the null caption"),
])
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        sample_image_tokens(_model(), _text(), N, **options)
