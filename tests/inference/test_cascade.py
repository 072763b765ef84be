"""Imagen's cascade (inference/cascade.py): base 14 x 14 -> SR 28 x 28, and its refusals."""

from __future__ import annotations

import pytest
import torch

from hirune.families import superres
from hirune.inference.cascade import cascade
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config

TINY = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
        "head_channels": 8}


def _run(root, preset, name, **extra):
    values = {"steps": 1, "batch_size": 4, "sample_every": 0, "ckpt_every": 1, "log_every": 1,
              "text_encoder": "tiny", "model_config": TINY, "out": str(root / name), **extra}
    train(preset_config(preset, values), progress=False)
    return load(root / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    return {"base": _run(root, "imagen-base-mnist5k", "base"),
            "sr": _run(root, "imagen-sr-mnist5k", "sr"),
            "sr7": _run(root, "imagen-sr-mnist5k", "sr7", low_res=7)}


def test_the_cascade_feeds_the_base_samples_to_the_sr_run(runs, monkeypatch):
    seen = {}
    inner = superres.sampling_condition

    def spy(run, low_res, aug_level, seed):
        if low_res is not None:
            seen["low_res"], seen["aug_level"] = low_res, aug_level
        return inner(run, low_res, aug_level, seed)

    monkeypatch.setattr(superres, "sampling_condition", spy)
    prompts = ["a handwritten seven", "a thick two"]
    images = cascade(runs["base"], runs["sr"], prompts, aug_level=0.1, base_scale=2.0, steps=2, seed=3)
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()
    base, _ = runs["base"].generate(2, steps=2, seed=3, prompts=prompts, denoiser=runs["base"].guide("cfg", 2.0),
                                    progress=False)
    assert torch.equal(seen["low_res"], base.x.clamp(-1, 1)) and seen["aug_level"] == 0.1
    again = cascade(runs["base"], runs["sr"], prompts, aug_level=0.1, base_scale=2.0, steps=2, seed=3)
    assert torch.equal(images, again)


def test_mismatched_resolutions_are_refused_naming_both(runs):
    with pytest.raises(ValueError, match=r"low_res=7.*base run's image size \(14 x 14"):
        cascade(runs["base"], runs["sr7"], ["a seven"], steps=2)


def test_an_sr_run_as_base_and_a_base_run_as_sr_are_refused(runs):
    with pytest.raises(ValueError, match="base run is a super-resolution run"):
        cascade(runs["sr"], runs["sr"], ["a seven"], steps=2)
    with pytest.raises(ValueError, match="not a super-resolution run"):
        cascade(runs["base"], runs["base"], ["a seven"], steps=2)


def test_the_cli_writes_a_grid_and_names_bad_input(runs, tmp_path, capsys):
    from hirune.cli import main

    base, sr, sr7 = (str(runs[k].run_dir) for k in ("base", "sr", "sr7"))
    out = tmp_path / "c.png"
    assert main(["cascade", base, sr, "--prompt", "a thin four", "--n", "2", "--aug", "0.3", "--scale", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    assert out.is_file()
    assert main(["cascade", base, sr7, "--prompt", "a four", "--steps", "2", "--out", str(out)]) == 2
    assert "does not match" in capsys.readouterr().err
