"""unCLIP's prior transformer (`models/prior.py`): the output is the query token's; the
attention is causal (a later token never changes an earlier output, the query sees every
token) and skips the text padding as keys; a broken mask is caught."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model
from hirune.models.prior import PriorConfig, causal_padding_mask

D, W, M = 8, 12, 5


def net(**kw):
    torch.manual_seed(0)
    return build_model("prior", dim=D, text_width=W, context_len=M, width=16, depth=2, heads=2, **kw).eval()


def inputs(B=3):
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, M, dtype=torch.bool)
    mask[:, 3:] = False                                          # two padding tokens
    return (torch.randn(B, D, generator=g), torch.rand(B, generator=g) * 999, torch.randn(B, M, W, generator=g),
            mask, torch.randn(B, D, generator=g))


def test_shapes_and_the_output_is_the_query_token():
    model = net()
    x, t, tokens, mask, emb = inputs()
    out = model(x, t, tokens, mask, emb)
    assert out.shape == (3, D)
    h = model.hidden(x, t, tokens, mask, emb)
    assert h.shape == (3, M + 4, 16)
    torch.testing.assert_close(out, model.out(model.norm(h[:, -1])))


def test_changing_a_later_token_never_changes_an_earlier_output_and_the_query_sees_everything():
    model = net()
    x, t, tokens, mask, emb = inputs()
    h = model.hidden(x, t, tokens, mask, emb)
    # the slots: text tokens 0..M-1, text embedding M, time M+1, noisy embedding M+2, query M+3
    changes = {M: dict(text_emb=emb + 1), M + 1: dict(t=t + 100), M + 2: dict(x=x + 1)}
    for slot, change in changes.items():
        args = dict(x=x, t=t, text_tokens=tokens, text_mask=mask, text_emb=emb) | change
        h2 = model.hidden(**args)
        torch.testing.assert_close(h2[:, :slot], h[:, :slot])          # earlier tokens untouched
        assert (h2[:, slot:] - h[:, slot:]).abs().amax() > 1e-4        # that token and the later ones change
        assert (model(**args) - model(x, t, tokens, mask, emb)).abs().amax() > 1e-4  # the query sees it
    tokens2 = tokens.clone()
    tokens2[:, 1] += 1                                                  # a real text token
    h2 = model.hidden(x, t, tokens2, mask, emb)
    torch.testing.assert_close(h2[:, :1], h[:, :1])
    assert (model(x, t, tokens2, mask, emb) - model(x, t, tokens, mask, emb)).abs().amax() > 1e-4


def test_padding_tokens_are_never_attended_to():
    model = net()
    x, t, tokens, mask, emb = inputs()
    tokens2 = tokens.clone()
    tokens2[:, 3:] = 100 * torch.randn(3, M - 3, W)                    # only padding changes
    out, out2 = model(x, t, tokens, mask, emb), model(x, t, tokens2, mask, emb)
    torch.testing.assert_close(out, out2)
    h, h2 = model.hidden(x, t, tokens, mask, emb), model.hidden(x, t, tokens2, mask, emb)
    torch.testing.assert_close(h[:, M:], h2[:, M:])                     # every real slot after the text
    # without the padding mask the same change shows: the test can fail
    full = torch.ones_like(mask)
    assert (model(x, t, tokens, full, emb) - model(x, t, tokens2, full, emb)).abs().amax() > 1e-4


def test_the_mask_is_causal_skips_padding_and_keeps_the_diagonal():
    mask = torch.tensor([[True, False]])
    m = causal_padding_mask(mask, 2)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0],
                             [1, 1, 0, 0],        # the padding token sees only itself and the real text
                             [1, 0, 1, 0],
                             [1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_a_broken_mask_is_caught(monkeypatch):
    """The causality test's check fails for a network whose mask lets tokens see ahead."""
    import hirune.models.prior as P

    monkeypatch.setattr(P, "causal_padding_mask", lambda text_mask, extra: torch.ones(
        text_mask.shape[0], 1, text_mask.shape[1] + extra, text_mask.shape[1] + extra, dtype=torch.bool))
    model = net()
    x, t, tokens, mask, emb = inputs()
    h, h2 = model.hidden(x, t, tokens, mask, emb), model.hidden(x + 1, t, tokens, mask, emb)
    assert (h2[:, :M + 2] - h[:, :M + 2]).abs().amax() > 1e-4


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="width=10, heads=4"):
        PriorConfig(width=10, heads=4)
    with pytest.raises(ValueError, match="depth=0"):
        PriorConfig(depth=0)
    x, t, tokens, mask, emb = inputs()
    with pytest.raises(ValueError, match="prior inputs"):
        net()(x, t, tokens[:, :4], mask[:, :4], emb)
