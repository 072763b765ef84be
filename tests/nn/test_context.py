"""Two text encoders at once (SDXL sec. 2.1; `hirune.nn.context`): a frozen encoder's float
context and a word encoder's ids, one token sequence, the pooled vector from the context
alone; in the UNet, DiT and U-ViT.  Float contexts stand in for MiniLM here, so nothing
needs the optional extra (tests/models/test_text.py runs the real one)."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model
from hirune.nn import ContextEmbedding
from hirune.nn.context import masked_mean

D, VOCAB, WORD_DIM, WORD_LEN, M = 24, 11, 16, 5, 7
TEXT = dict(context_dim=D, context_len=M, word_vocab=VOCAB, word_dim=WORD_DIM, word_len=WORD_LEN)
NETWORKS = [("unet", dict(in_channels=1, channels=16, channel_mult=(1, 2), attention_resolutions=(2,))),
            ("dit", dict(size="T/2", depth=2, in_channels=1, image_size=8)),
            ("uvit", dict(hidden_size=64, depth=3, num_heads=4, in_channels=1, image_size=8))]
IDS = [n[0] for n in NETWORKS]


def condition(batch: int = 2, seed: int = 0) -> dict:
    """A caption pair: float context (B, M, D) with 4 real tokens, word ids (B, W) with 3."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(M)[None].expand(batch, M) < 4
    words_mask = torch.arange(WORD_LEN)[None].expand(batch, WORD_LEN) < 3
    words = torch.randint(3, VOCAB, (batch, WORD_LEN), generator=g).masked_fill(~words_mask, 0)
    return {"context": torch.randn(batch, M, D, generator=g), "context_mask": mask,
            "words": words, "words_mask": words_mask}


def perturbed(kind: str, config: dict, seed: int = 0) -> torch.nn.Module:
    """A network whose zero-started layers (output, cross-attention projections) are not zero."""
    torch.manual_seed(seed)
    model = build_model(kind, **config, **TEXT)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def parts_reached(model, x, t, cond) -> dict[str, bool]:
    """Whether changing each encoder's part of the first caption alone changes the first
    output (and leaves the second example's output alone)."""
    out = model(x, t, **cond)
    words, context = cond["words"].clone(), cond["context"].clone()
    words[0, 1] = 3 if words[0, 1] != 3 else 4                            # another word at a real token
    context[0, 1] = torch.randn(D, generator=torch.Generator().manual_seed(1))
    reached = {}
    for key, changed in (("words", words), ("context", context)):
        other = model(x, t, **{**cond, key: changed})
        assert torch.allclose(other[1], out[1], atol=1e-6), key            # row 1's caption did not change
        reached[key] = not torch.allclose(other[0], out[0], atol=1e-6)
    return reached


def test_tokens_are_the_context_then_the_projected_words_and_pooled_reads_the_context_alone():
    torch.manual_seed(0)
    embed = ContextEmbedding(D, 32, word_vocab=VOCAB, word_dim=WORD_DIM, word_len=WORD_LEN)
    c = condition()
    tokens, mask, pooled = embed(c["context"], c["context_mask"], c["words"], c["words_mask"])
    assert tokens.shape == (2, M + WORD_LEN, D) and mask.shape == (2, M + WORD_LEN) and pooled.shape == (2, 32)
    assert torch.equal(tokens[:, :M], c["context"])
    assert torch.equal(mask, torch.cat([c["context_mask"], c["words_mask"]], 1))
    words = embed.words_proj(embed.words(c["words"], c["words_mask"]))
    assert torch.equal(tokens[:, M:], words)
    assert torch.allclose(pooled, embed.pooled(masked_mean(c["context"], c["context_mask"])))
    other = embed(c["context"], c["context_mask"], c["words"].flip(0), c["words_mask"])
    assert torch.equal(other[2], pooled) and not torch.equal(other[0], tokens)   # words: tokens only


def test_one_encoder_is_unchanged_and_has_no_word_modules():
    embed = ContextEmbedding(D, 32)
    assert not any("words" in name for name in embed.state_dict())
    context = torch.randn(2, M, D)
    tokens, mask, _ = embed(context, None)
    assert mask is None and tokens is context                             # the mask given, None stays None
    for kind, config in NETWORKS:
        model = build_model(kind, **config, context_dim=D)
        assert not any("words" in name for name in model.state_dict()), kind


@pytest.mark.parametrize("kind, config", NETWORKS, ids=IDS)
def test_both_encoders_reach_the_output(kind, config):
    model = perturbed(kind, config)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    cond = condition()
    assert model(x, t, **cond).shape == (2, 1, 8, 8)
    assert parts_reached(model, x, t, cond) == {"words": True, "context": True}
    # padding is no key: junk under either mask changes nothing
    junk = {**cond, "words": cond["words"].masked_fill(~cond["words_mask"], VOCAB - 1),
            "context": cond["context"].masked_fill(~cond["context_mask"][..., None], 7.0)}
    assert torch.allclose(model(x, t, **junk), model(x, t, **cond), atol=1e-6)
    if kind == "uvit":
        assert model.extras == 1 + M + WORD_LEN                           # time + both encoders' tokens


@pytest.mark.parametrize("drop", ["words", "context"])
def test_the_harness_catches_a_network_that_drops_an_encoder(monkeypatch, drop):
    """A broken ContextEmbedding that keeps one encoder's tokens only is caught."""
    real = ContextEmbedding.forward

    def broken(self, context, mask, words=None, words_mask=None):
        tokens, full, pooled = real(self, context, mask, words, words_mask)
        keep = slice(0, M) if drop == "words" else slice(M, None)
        return tokens[:, keep], full[:, keep], pooled if drop == "words" else pooled * 0

    monkeypatch.setattr(ContextEmbedding, "forward", broken)
    model = perturbed(*NETWORKS[0])
    reached = parts_reached(model, torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0]), condition())
    assert reached[drop] is False and reached[{"words": "context", "context": "words"}[drop]] is True


@pytest.mark.parametrize("kind, config", NETWORKS, ids=IDS)
def test_words_are_refused_where_they_do_not_belong(kind, config):
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    cond = condition()
    pair = build_model(kind, **config, **TEXT)
    with pytest.raises(ValueError, match="word_vocab"):
        pair(x, t, context=cond["context"], context_mask=cond["context_mask"])        # words missing
    with pytest.raises(TypeError, match="int64"):
        pair(x, t, **{**cond, "words": cond["words"].float()})
    one = build_model(kind, **config, context_dim=D, context_len=M)
    with pytest.raises(ValueError, match="word_vocab"):
        one(x, t, **cond)                                                              # words not read
    with pytest.raises(ValueError, match="without text conditioning"):
        build_model(kind, **config)(x, t, words=cond["words"])
    if kind == "uvit":
        with pytest.raises(ValueError, match=f"exactly {WORD_LEN} word tokens"):
            pair(x, t, **{**cond, "words": cond["words"][:, :3], "words_mask": cond["words_mask"][:, :3]})


@pytest.mark.parametrize("fields, message", [
    ({"context_dim": None}, "valid: word_vocab beside a frozen encoder's float context"),
    ({"context_vocab": 9}, "valid: word_vocab beside a frozen encoder's float context"),
    ({"word_dim": 0}, "word_dim=0 is not valid; valid: a positive int"),
    ({"word_len": -1}, "word_len=-1 is not valid; valid: a positive int"),
])
@pytest.mark.parametrize("kind, config", NETWORKS, ids=IDS)
def test_bad_word_fields_are_refused(kind, config, fields, message):
    with pytest.raises(ValueError, match="word") as e:
        build_model(kind, **config, **{**TEXT, **fields})
    assert message in str(e.value)
