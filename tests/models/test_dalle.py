"""DALL-E's transformer: causality, the joint vocabulary's offset, the key/value cache
against full recomputation (and a broken cache caught), tokens outside the vocabulary, and
the BPE text tokenizer (trained on captions, JSON round trip, truncation warning)."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model
from hirune.models.dalle import JointVocabulary, KVCache

L, N = 5, 6


def _model(**kw):
    torch.manual_seed(0)
    config = dict(text_vocab=11, text_len=L, num_codes=7, image_len=N, width=16, depth=2, heads=2, **kw)
    return build_model("dalle", config).double().eval()


def _tokens(B=3, n=N - 1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 11, (B, L), generator=g), torch.randint(0, 7, (B, n), generator=g)


def test_joint_vocabulary_puts_image_codes_after_the_text():
    v = JointVocabulary(text_vocab=11, num_codes=7)
    codes = torch.arange(7)
    assert v.size == 18 and torch.equal(v.image_ids(codes), codes + 11)
    assert torch.equal(v.codes(v.image_ids(codes)), codes)
    logits = torch.arange(18.0)
    assert torch.equal(v.text_logits(logits), torch.arange(11.0))
    assert torch.equal(v.image_logits(logits), torch.arange(11.0, 18.0))  # indexed by code


def test_logits_shape_and_causality_by_autograd():
    """d logit_p / d embedding_q = 0 for every q > p: no position sees a later token."""
    model = _model()
    text, image = _tokens()
    h = model.embed(text, image).detach().requires_grad_(True)
    out = h
    for layer, block in enumerate(model.blocks):
        out = block(out, None, layer)
    logits = model.head(model.norm(out))
    assert model(text, image).shape == (3, L + N - 1, 18)
    T = L + N - 1
    for p in range(T):
        (grad,) = torch.autograd.grad(logits[:, p].sum(), h, retain_graph=True)
        seen = grad.abs().sum(dim=(0, 2))
        assert (seen[p + 1:] == 0).all() and (seen[: p + 1] > 0).all(), p


def test_causality_by_perturbation_of_a_later_token():
    model = _model()
    text, image = _tokens()
    base = model(text, image)
    changed = image.clone()
    changed[:, 3] = (changed[:, 3] + 1) % 7                 # image token at position L + 3
    out = model(text, changed)
    assert torch.equal(out[:, : L + 3], base[:, : L + 3])   # positions up to it see nothing of it
    assert not torch.allclose(out[:, L + 3:], base[:, L + 3:])


def test_the_cache_gives_the_logits_of_full_recomputation():
    model = _model()
    text, image = _tokens(n=N)
    full = model(text, image)
    cache = KVCache()
    parts = [model(text, image[:, :2], cache=cache)]        # prefill: L + 2 positions
    for n in range(3, N + 1):                               # then one position each
        parts.append(model(text, image[:, :n], cache=cache))
        assert parts[-1].shape[1] == 1 and cache.length == L + n
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("text_bad, image_bad, match", [
    (11, None, r"text token 11 is outside the vocabulary; valid: 0..10"),
    (-1, None, r"text token -1 .*valid: 0..10"),
    (None, 7, r"image code 7 is outside the vocabulary; valid: 0..6"),
])
def test_tokens_outside_the_vocabulary_are_refused(text_bad, image_bad, match):
    model = _model()
    text, image = _tokens()
    if text_bad is not None:
        text[0, 2] = text_bad
    if image_bad is not None:
        image[1, 0] = image_bad
    with pytest.raises(ValueError, match=match):
        model(text, image)
    with pytest.raises(ValueError, match="text_len=5"):
        model(text[:, :4], image)
    with pytest.raises(ValueError, match=r"n <= 6"):
        model(text, torch.zeros(3, N + 1, dtype=torch.long))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="divisible by heads"):
        build_model("dalle", width=10, heads=3)
    with pytest.raises(ValueError, match="num_codes must be >= 1"):
        build_model("dalle", num_codes=0)


# --- the BPE text tokenizer -----------------------------------------------------------------

def test_bpe_trains_on_captions_round_trips_as_json_and_warns_on_truncation():
    pytest.importorskip("tokenizers")
    from hirune.data.captions import TRAIN_TEMPLATES, caption
    from hirune.models.bpe import BOS, PAD, UNK, BPETokenizer

    captions = [caption(k, th, sl, t) for k in range(10) for th in range(3) for sl in range(3) for t in TRAIN_TEMPLATES]
    bpe = BPETokenizer.train(captions, vocab_size=64, max_len=24)
    assert bpe.vocab_size <= 64
    ids, mask = bpe(["a handwritten seven", ""])
    assert ids.shape == (2, 24) and ids[0, 0] == BOS and ids[1, 0] == BOS and (ids[1, 1:] == PAD).all()
    assert torch.equal(mask, ids != PAD)
    again = BPETokenizer.from_json(bpe.to_json(), max_len=24)
    probe = captions[::7] + ["the number 7 drawn lightly"]
    assert torch.equal(again(probe)[0], bpe(probe)[0])
    assert UNK in bpe(["a seven @"])[0][0].tolist()                # a character never seen
    with pytest.warns(UserWarning, match="truncated"):
        long_ids, _ = bpe(["a thick handwritten seven, slanted left " * 4])
    assert long_ids.shape == (1, 24) and (long_ids != PAD).all()
