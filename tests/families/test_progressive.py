"""Progressive training of a video run (families/progressive.py): a run at 32 x 32 started from
a run on the same clips pooled to 16 x 16.  Its start is the base's function exactly wherever
the base was defined (fed 16 x 16 clips it gives the base's output, bitwise, under either
position setting); under "interpolate" the 32 x 32 grid's even tokens take the base grid's
positions; what a progressive run may not change is refused by name."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer

# pixel space (no VAE), 4 x 4 patches: 4 x 4 tokens a frame at 16 x 16, 8 x 8 at 32 x 32
NET = {"size": "tiny", "patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2}
TINY = {"autoencoder": "", "steps": 2, "batch_size": 4, "ckpt_every": 2, "sample_every": 0, "num_samples": 2,
        "sample_steps": 2, "log_every": 1, "model_config": NET}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from hirune.training.loop import train

    out = tmp_path_factory.mktemp("base16")
    train(preset_config("cogvideox-moving-mnist5k-16", {**TINY, "out": str(out)}))
    return out


def _progressive(base, tmp_path, **extra):
    over = {**TINY, "model_config": {}, "out": str(tmp_path), "base": str(base), **extra}
    return Trainer(preset_config("cogvideox-progressive-moving-mnist5k", over)).family


def _randomised(parent, run):
    """Both networks with the same random weights (2 steps from adaLN-Zero leave every gate
    near 0: attention, and so the positions, would hardly show)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in parent.model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    run.model.load_state_dict(parent.model.state_dict())


def _output(model, x, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(len(x), generator=g) * 1000
    words = torch.randint(1, 20, (len(x), 6), generator=g)
    with torch.no_grad():
        return model(x, t, context=words, context_mask=torch.ones_like(words, dtype=torch.bool))


@pytest.mark.parametrize("scaling", ["extrapolate", "interpolate"])
def test_the_start_is_the_base_function_at_the_base_resolution(base, tmp_path, scaling):
    from hirune.training.loading import load

    run = _progressive(base, tmp_path, model_config={"rope_scaling": scaling})
    parent = load(base)
    c = run.model.config
    assert (c.sample_size, c.sample_frames) == (32, 9) and parent.model.config.sample_size == 16
    assert c.rope_scaling == scaling and c.rope_base == ((9, 4, 4) if scaling == "interpolate" else None)
    for key, value in parent.model.state_dict().items():  # the base's EMA weights, bitwise
        assert torch.equal(run.model.state_dict()[key], value), key
    _randomised(parent, run)
    small = torch.rand(2, 1, 9, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert torch.equal(_output(run.model.eval(), small), _output(parent.model.eval(), small))
    if scaling == "interpolate":  # the 8 x 8 grid's even tokens sit where the base's 4 x 4 tokens did
        big, little = run.model.rope(9, 8, 8, None, "cpu"), parent.model.rope(9, 4, 4, None, "cpu")
        even = torch.arange(9 * 64).view(9, 8, 8)[:, ::2, ::2].flatten()
        for a, b in zip(big, little):
            torch.testing.assert_close(a[even], b, rtol=0, atol=1e-6)


def test_interpolation_onto_its_own_grid_is_caught(base, tmp_path):
    """The harness: mapping the positions onto the new grid (9, 8, 8) rather than the base's
    moves every 16 x 16 token off its trained position, and the output changes."""
    from hirune.training.loading import load

    run = _progressive(base, tmp_path, model_config={"rope_scaling": "interpolate", "rope_base": [9, 8, 8]})
    parent = load(base)
    _randomised(parent, run)
    small = torch.rand(2, 1, 9, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    gap = (_output(run.model.eval(), small) - _output(parent.model.eval(), small)).abs().max()
    assert gap > 1e-2


def test_progressive_settings_refused_by_name(base, tmp_path):
    with pytest.raises(ValueError, match=r"model_config keys \['hidden_size'\] are not valid with base=.*valid: "
                                         r"\['rope_scaling', 'rope_base'\]"):
        _progressive(base, tmp_path, model_config={"hidden_size": 64})
    with pytest.raises(ValueError, match="adapter='lora' is not valid for family 'video'"):
        _progressive(base, tmp_path, adapter="lora")
    with pytest.raises(ValueError, match="dataset='mnist5k-frames' .* is not valid for base="):
        _progressive(base, tmp_path, dataset="mnist5k-frames")


def test_learned_positions_are_refused_on_a_new_grid(tmp_path_factory, tmp_path):
    from hirune.training.loop import train

    out = tmp_path_factory.mktemp("learned16")
    train(preset_config("cogvideox-moving-mnist5k-16", {**TINY, "out": str(out), "steps": 1, "ckpt_every": 1,
                                                         "model_config": {**NET, "positions": "learned"}}))
    with pytest.raises(ValueError, match="has learned positions for a .* valid: a base with positions='rope3d'"):
        _progressive(out, tmp_path)


def test_the_pooled_clips_and_their_measure():
    from hirune.data import data_format, example_shape, load_dataset, original_dataset
    from hirune.evaluation.video import video_measures

    big, small = load_dataset("moving-mnist5k", "test"), load_dataset("moving-mnist5k-16", "test")
    assert small.data.shape == (500, 1, 9, 16, 16) and small.levels == 1021
    assert small.format == data_format("moving-mnist5k-16") and example_shape("moving-mnist5k-16") == (1, 9, 16, 16)
    torch.testing.assert_close(small.data, torch.nn.functional.avg_pool3d(big.data, (1, 2, 2)))
    assert torch.equal(small.labels, big.labels) and torch.equal(small.attributes["direction"],
                                                                 big.attributes["direction"])
    assert original_dataset("moving-mnist5k-16") == original_dataset("moving-mnist5k") == "moving-mnist5k"
    assert original_dataset("mnist5k-frames") == "mnist5k-frames"
    m, _ = video_measures(small.data[:50], small.labels[:50], small.attributes["direction"][:50])
    assert m["direction_accuracy"] == 1.0 and m["frame_accuracy"] > 0.6
    with pytest.raises(ValueError, match="with H dividing 32"):
        video_measures(torch.zeros(1, 1, 9, 12, 12), small.labels[:1], small.attributes["direction"][:1])
