"""Activation recomputation per block: exactly the gradients of the plain model (dropout
included), far fewer saved activations, for every model with blocks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hirune.models import blocks, build_model
from hirune.models.recompute import recompute_blocks
from hirune.training import TrainConfig, Trainer, preset_config, train
from hirune.training.measure import activation_bytes, measure

MODELS = [("mlp", dict(dim=2, hidden=32, depth=3, dropout=0.2), (16, 2)),
          ("unet", dict(in_channels=1, channels=16, channel_mult=(1, 2), attention_resolutions=(2,), dropout=0.2),
           (4, 1, 8, 8)),
          ("dit", dict(size="T/2", depth=2, in_channels=1, image_size=8), (4, 1, 8, 8)),
          ("uvit", dict(size="tiny", in_channels=1, image_size=8), (4, 1, 8, 8))]


def _grads(kind, config, shape, recompute: bool, seed: int = 0, cond=None) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(kind, **config)
    with torch.no_grad():  # leave the zero init, so that every block matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if recompute:
        assert recompute_blocks(model) == len(blocks(model)) > 0
    model.train()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(shape, generator=g), torch.rand(shape[0], generator=g) * 999
    torch.manual_seed(seed)  # the dropout masks
    model(x, t, **(cond or {})).square().mean().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("kind, config, shape", MODELS, ids=[m[0] for m in MODELS])
def test_recomputed_gradients_are_exactly_the_plain_ones(kind, config, shape):
    for a, b in zip(_grads(kind, config, shape, False), _grads(kind, config, shape, True)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["dit", "uvit"])
def test_recomputed_gradients_of_text_models_are_exactly_the_plain_ones(kind):
    """The caption reaches the recomputed blocks (DiT: context, U-ViT: the key padding mask)."""
    from hirune.models.text import TextConditioner

    text = TextConditioner("tiny")
    _, config, shape = next(m for m in MODELS if m[0] == kind)
    config = {**config, **text.model_config()}
    cond = text(["a thick seven", "a one", "", "a thin two, slanted left"])
    for a, b in zip(_grads(kind, config, shape, False, cond=cond), _grads(kind, config, shape, True, cond=cond)):
        assert torch.equal(a, b)


def test_harness_catches_recomputation_that_redraws_dropout(monkeypatch):
    """The comparison can fail: recomputing without restoring the RNG state draws new
    dropout masks in the backward pass, and the gradients differ."""
    import hirune.models.recompute as R

    plain = R.checkpoint
    monkeypatch.setattr(R, "checkpoint", lambda f, *a, **k: plain(f, *a, preserve_rng_state=False, **k))
    kind, config, shape = MODELS[0]
    assert any(not torch.equal(a, b) for a, b in zip(_grads(kind, config, shape, False),
                                                     _grads(kind, config, shape, True)))


def test_recompute_keeps_a_fraction_of_the_activations():
    cfg = preset_config("ddpm-digits", {"batch_size": 32, "out": "unused"})
    recomputing = dataclasses.replace(cfg, recompute=True)
    plain = activation_bytes(Trainer(cfg, distributed=False), 32)
    kept = activation_bytes(Trainer(recomputing, distributed=False), 32)
    assert kept < 0.4 * plain
    # the planner adds the one block recomputed at a time in the backward pass
    planned = measure(recomputing, 32, time_step=False)["activation_bytes"]
    assert kept < planned < plain


def test_training_with_recompute_is_the_same_run(tmp_path):
    base = dict(dataset="two_moons", model="mlp", model_config={"hidden": 32, "depth": 2, "dropout": 0.1},
                process="ddpm", process_config={"T": 100}, steps=5, batch_size=32, log_every=1, ckpt_every=5,
                sample_every=0)
    a = train(TrainConfig.from_dict({**base, "out": str(tmp_path / "a")}), progress=False)
    b = train(TrainConfig.from_dict({**base, "recompute": True, "out": str(tmp_path / "b")}), progress=False)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k


def test_a_model_without_blocks_is_refused(tmp_path, monkeypatch):
    import hirune.models.recompute as R

    assert recompute_blocks(torch.nn.Linear(2, 2)) == 0
    monkeypatch.setattr(R, "recompute_blocks", lambda model: 0)  # what the Trainer asks for an MLP
    with pytest.raises(ValueError, match="model 'mlp' has no repeated blocks"):
        Trainer(TrainConfig(recompute=True, out=str(tmp_path / "r")), distributed=False)


# --- selective recomputation: attention's core only (Korthikanti et al. 2022, sec. 5) -----------------
def _attention_grads(kind: str, config: dict, inputs, selective: bool, redraw: bool = False):
    from hirune.models.recompute import recompute_attention

    torch.manual_seed(0)
    model = build_model(kind, **config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if selective:
        assert recompute_attention(model) > 0
    model.train()
    torch.manual_seed(3)  # the dropout masks
    if redraw:
        import torch.utils.checkpoint as C

        plain = C.checkpoint
        C.checkpoint = lambda f, *a, **k: plain(f, *a, **{**k, "preserve_rng_state": False})
    try:
        model(**inputs).float().square().mean().backward()
    finally:
        if redraw:
            C.checkpoint = plain
    return [p.grad.clone() for p in model.parameters()]


DALLE = dict(text_vocab=20, text_len=6, num_codes=16, image_len=9, width=64, depth=2, heads=4, dropout=0.2)


def _dalle_inputs():
    g = torch.Generator().manual_seed(1)
    return dict(text=torch.randint(0, 20, (4, 6), generator=g), image=torch.randint(0, 16, (4, 8), generator=g))


@pytest.mark.parametrize("kind, config, shape", MODELS[2:], ids=[m[0] for m in MODELS[2:]])
def test_selective_recomputation_gives_exactly_the_plain_gradients(kind, config, shape):
    g = torch.Generator().manual_seed(1)
    inputs = dict(x=torch.randn(shape, generator=g), t=torch.rand(shape[0], generator=g) * 999)
    for a, b in zip(_attention_grads(kind, config, inputs, False), _attention_grads(kind, config, inputs, True)):
        assert torch.equal(a, b)


def test_selective_recomputation_keeps_dropout_masks_and_the_harness_sees_redrawn_ones():
    """DALL-E's attention dropout is recomputed with the RNG restored: the same gradients; a
    recomputation that draws new masks gives others."""
    plain = _attention_grads("dalle", DALLE, _dalle_inputs(), False)
    assert all(torch.equal(a, b) for a, b in zip(plain, _attention_grads("dalle", DALLE, _dalle_inputs(), True)))
    redrawn = _attention_grads("dalle", DALLE, _dalle_inputs(), True, redraw=True)
    assert any(not torch.equal(a, b) for a, b in zip(plain, redrawn))


def test_selective_recomputation_drops_the_quadratic_activations():
    """Where the scores are materialised (DALL-E's attention under dropout: probabilities and
    mask, B heads s^2 each) selective recomputation drops them: at least two float32 s x s
    tensors per head and layer (the softmax output and the dropped probabilities)."""
    from hirune.models.recompute import recompute_attention

    def saved(selective: bool) -> int:
        torch.manual_seed(0)
        model = build_model("dalle", **{**DALLE, "image_len": 64, "text_len": 16}).train()
        if selective:
            recompute_attention(model)
        g = torch.Generator().manual_seed(1)
        text, image = torch.randint(0, 20, (4, 16), generator=g), torch.randint(0, 16, (4, 63), generator=g)
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(text, image).sum()
        return sum(seen.values())
    plain, selective = saved(False), saved(True)
    B, heads, s, depth = 4, DALLE["heads"], 16 + 63, DALLE["depth"]
    assert plain - selective >= depth * 2 * B * heads * s * s * 4, (plain, selective)


def test_training_with_selective_recomputation_is_the_same_run(tmp_path):
    items = {"steps": 3, "batch_size": 8, "log_every": 1, "ckpt_every": 3, "sample_every": 0}
    a = train(preset_config("dit-digits", {**items, "out": str(tmp_path / "a")}), progress=False)
    b = train(preset_config("dit-digits", {**items, "recompute_attention": True, "out": str(tmp_path / "b")}),
              progress=False)
    for (k, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), k


def test_selective_recomputation_of_a_model_without_token_attention_is_refused(tmp_path):
    with pytest.raises(ValueError, match="recompute_attention=true: model 'mlp' has no token attention"):
        Trainer(TrainConfig(recompute_attention=True, out=str(tmp_path / "r")), distributed=False)
