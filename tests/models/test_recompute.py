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
