"""The CLIP network (`models/clip.py`): unit-norm embeddings from both towers (token ids or a
frozen encoder's features), the temperature's initial value and its clamp at a logit
scale of 100, clear errors for the wrong kind of text input."""

from __future__ import annotations

import math

import pytest
import torch

from hirune.models import build_model
from hirune.models.clip import MAX_LOG_LOGIT_SCALE

SMALL = {"channels": 8, "embed_dim": 16, "text_dim": 32, "text_depth": 1, "context_len": 8}


def tokens(b: int = 5, m: int = 8, vocab: int = 20):
    ids = torch.randint(3, vocab, (b, m))
    mask = torch.arange(m)[None] < torch.randint(2, m + 1, (b, 1))
    return ids * mask, mask


@pytest.mark.parametrize("size", [8, 28])
def test_embeddings_have_unit_norm(size):
    model = build_model("clip", in_channels=1, image_size=size, vocab_size=20, **SMALL)
    ids, mask = tokens()
    image_emb, text_emb, scale = model(torch.randn(5, 1, size, size), ids, mask)
    assert image_emb.shape == text_emb.shape == (5, 16)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(5))
    assert scale.shape == ()


def test_frozen_features_are_mean_pooled_over_real_tokens_and_projected():
    model = build_model("clip", image_size=8, vocab_size=0, text_in_dim=6, **SMALL)
    feats, mask = torch.randn(3, 8, 6), torch.ones(3, 8, dtype=torch.bool)
    mask[:, 4:] = False
    changed = feats.clone()
    changed[:, 4:] = 100.0  # padding positions do not count
    torch.testing.assert_close(model.encode_text(feats, mask), model.encode_text(changed, mask))
    torch.testing.assert_close(model.encode_text(feats, mask).norm(dim=-1), torch.ones(3))
    with pytest.raises(TypeError, match="frozen encoder's features"):
        model.encode_text(torch.zeros(3, 8, dtype=torch.long), mask)
    with pytest.raises(TypeError, match="token ids"):
        build_model("clip", image_size=8, vocab_size=20, **SMALL).encode_text(feats, mask)


def test_temperature_starts_at_0_07_and_the_scale_is_clamped_at_100():
    model = build_model("clip", image_size=8, vocab_size=20, **SMALL)
    assert math.isclose(model.log_logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    assert math.isclose(model.logit_scale().item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.log_logit_scale.fill_(10.0)
    scale = model.logit_scale()
    assert math.isclose(scale.item(), 100.0, rel_tol=1e-6)
    scale.backward()
    assert float(model.log_logit_scale.grad) == 0.0  # above the bound no gradient reaches it
    model.clamp_temperature_()  # CLIP's clamp of the parameter itself
    assert model.log_logit_scale.item() == pytest.approx(MAX_LOG_LOGIT_SCALE)
    model.log_logit_scale.grad = None
    model.logit_scale().backward()  # at the bound the gradient passes, so the scale can come down
    assert float(model.log_logit_scale.grad) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="init_temperature=0.001 is not valid"):
        build_model("clip", image_size=8, vocab_size=20, init_temperature=0.001)


def test_bad_sizes_are_refused_naming_what_is_valid():
    with pytest.raises(ValueError, match="CLIPConfig.channels=12 is not valid; valid: a multiple of 8"):
        build_model("clip", channels=12)
    with pytest.raises(ValueError, match="CLIPConfig.embed_dim=0 is not valid"):
        build_model("clip", embed_dim=0)
    with pytest.raises(ValueError, match="text_dim a multiple of text_heads"):
        build_model("clip", text_dim=30, text_heads=4)
    with pytest.raises(TypeError, match="CLIPConfig.embed_dim must be int"):
        build_model("clip", embed_dim="big")
