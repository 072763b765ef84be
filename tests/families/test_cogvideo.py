"""The cogvideo family: which frames a sequence holds (key frames at a gap, interpolation
triples a, b, m), that an interpolation run scores the middle frame only, refusals by name
(a gap outside the set, an image run that is not a dalle run or is on other data, a dataset too
short), and (slow) the whole chain: a VQ and a dalle run on the still frames, key frames and
interpolation runs started from it, recursive interpolation to 17 frames, evaluation."""

from __future__ import annotations

import types

import pytest
import torch

from hirune.families.cogvideo import check_gap, check_image_run, frame_indices, video_token_loss
from hirune.models.cogvideo import predictor_positions, sequence_length
from hirune.models.dalle import JointVocabulary
from hirune.training.config import check_config
from hirune.training.presets import preset_config


def test_key_frames_start_at_the_first_frame_and_triples_are_a_b_then_the_middle():
    gaps = torch.tensor([1, 2, 4])
    keys = frame_indices("keyframes", 5, gaps, torch.zeros(3), 17)
    assert keys.tolist() == [[0, 1, 2, 3, 4], [0, 2, 4, 6, 8], [0, 4, 8, 12, 16]]
    first = frame_indices("interpolate", 5, gaps, torch.zeros(3), 17)
    assert first.tolist() == [[0, 2, 1], [0, 4, 2], [0, 8, 4]]
    last = frame_indices("interpolate", 5, gaps, torch.full((3,), 0.9999), 17)
    assert last.tolist() == [[14, 16, 15], [12, 16, 14], [8, 16, 12]]   # b is the clip's last frame


def test_an_interpolation_run_scores_the_middle_frame_only():
    L, N, V = 3, 2, JointVocabulary(5, 4)
    text = torch.tensor([[1, 3, 0]])
    codes = torch.tensor([[0, 1, 2, 3, 1, 2]])                         # a | b | m, N = 2 codes each
    times = torch.tensor([0, 2, 1])

    def forward(text, rate, given, times):
        """Logits that put all their mass on the right code at the middle frame's predictors only."""
        logits = torch.zeros(1, sequence_length(L, N, given.shape[1]), V.size)
        at = predictor_positions(L, N, torch.arange(4, 6))
        logits[0, at, V.offset + codes[0, 4:]] = 50.0
        return logits

    forward.config = types.SimpleNamespace(image_len=N)
    per_sample, terms = video_token_loss(forward, V, text, torch.tensor([0]), codes, times, 2, 0.0)
    assert float(per_sample) < 1e-12
    every, _ = video_token_loss(forward, V, text, torch.tensor([0]), codes, times, 6, 0.0)   # broken: all scored
    assert float(every) > 0.5                                         # 4 of 6 codes at log 4


def test_bad_gaps_image_runs_and_datasets_are_refused_by_name():
    with pytest.raises(ValueError, match=r"gap=3 is not valid; valid: \[1, 2, 4\]"):
        check_gap(3)
    data = types.SimpleNamespace(shape=(1, 17, 32, 32), name="moving-mnist5k-17")
    vq = types.SimpleNamespace(name="autoencoder")
    with pytest.raises(ValueError, match="is a autoencoder run; valid: a dalle run"):
        check_image_run("runs/vq", vq, data)
    digits = types.SimpleNamespace(name="dalle", data=types.SimpleNamespace(name="mnist5k", shape=(1, 28, 28)))
    with pytest.raises(ValueError, match="was trained on mnist5k.*valid: a dalle run on moving-mnist5k-stills"):
        check_image_run("runs/dalle-mnist5k", digits, data)
    stills = types.SimpleNamespace(name="moving-mnist5k-stills", shape=(1, 32, 32))
    other_tokens = types.SimpleNamespace(name="dalle", data=stills, image_tokenizer=types.SimpleNamespace(
        dataset="mnist5k"))
    with pytest.raises(ValueError, match="image tokenizer of 'runs/d' was trained on mnist5k"):
        check_image_run("runs/d", other_tokens, data)

    def check(**values):
        check_config(preset_config("cogvideo-moving-mnist5k", values))

    with pytest.raises(ValueError, match="cogvideo needs image_model=RUN"):
        check(image_model="")
    with pytest.raises(ValueError, match="keyframes at gaps .* spans 17 frames, more than the 9 of moving-mnist5k"):
        check(dataset="moving-mnist5k")
    with pytest.raises(ValueError, match="dataset='mnist5k-frames' is not valid for family 'cogvideo'"):
        check(dataset="mnist5k-frames")
    with pytest.raises(ValueError, match="stage='both' is not valid"):
        check(stage="both")
    with pytest.raises(ValueError, match="model_config .* comes from its image_model"):
        check(model_config={"width": 8})


# --- the whole chain (slow: four tiny training runs) --------------------------------------------
TINY_VQ = {"size": "f4", "channels": 4, "channel_mult": [1, 1, 1], "num_res_blocks": 1, "z_channels": 4,
           "codebook_size": 32, "codebook_update": "ema"}


def _train(preset, out, **extra):
    from hirune.training.loop import train

    train(preset_config(preset, {"steps": 2, "batch_size": 4, "sample_every": 0, "ckpt_every": 2, "log_every": 1,
                                 "num_samples": 2, "out": str(out), **extra}), progress=False)
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("cogvideo")
    _train("vq-ae-moving-stills", root / "vq", model_config=TINY_VQ)
    _train("dalle-moving-stills", root / "dalle", tokenizer=str(root / "vq"),
           model_config={"width": 16, "depth": 1, "heads": 2})
    _train("cogvideo-moving-mnist5k", root / "keys", image_model=str(root / "dalle"), sample_every=2)
    _train("cogvideo-interp-moving-mnist5k", root / "interp", image_model=str(root / "dalle"), sample_every=2)
    return root


@pytest.mark.slow
def test_runs_start_from_the_image_model_and_frozen_spatial_weights_stay(chain, tmp_path):
    from hirune.training.loading import load

    image = load(chain / "dalle").model.state_dict()
    frozen = load(_train("cogvideo-moving-mnist5k", tmp_path / "frozen", image_model=str(chain / "dalle"),
                         freeze_spatial=True, ema_decay=0.0))
    new = set(frozen.model.new_parameter_names())
    weights = frozen.model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in image.items())
    assert any(not torch.equal(weights[k], torch.zeros_like(weights[k])) for k in new if k.endswith(".gate"))
    scratch = load(_train("cogvideo-moving-mnist5k", tmp_path / "scratch", image_model=str(chain / "dalle"),
                          from_scratch=True, steps=1, ckpt_every=1))
    assert not torch.equal(scratch.model.state_dict()["head.weight"], image["head.weight"])
    assert (chain / "keys" / "samples").is_dir() and list((chain / "keys" / "samples").glob("*.gif"))


@pytest.mark.slow
def test_key_frames_then_recursive_interpolation_to_17_frames(chain):
    from hirune.training.loading import load

    keys, interp = load(chain / "keys"), load(chain / "interp")
    out, labels = keys.generate(3, gap=4, label=7, motion="moving left")
    assert out.x.shape == (3, 1, 5, 32, 32) and labels.tolist() == [7, 7, 7]
    assert float(out.x.min()) >= -1 and float(out.x.max()) <= 1
    full, _ = keys.generate(3, gap=4, label=7, motion="moving left", interpolator=interp)
    assert full.x.shape == (3, 1, 17, 32, 32)
    assert torch.allclose(full.x[:, :, ::4], out.x, atol=1e-5)        # the key frames kept as drawn (decoded in
    #                                                                   another batch: not bitwise)
    nine, _ = keys.generate(2, gap=2, interpolator=interp, scale=2.0)
    assert nine.x.shape == (2, 1, 9, 32, 32)
    with pytest.raises(ValueError, match=r"gap=3 is not valid; valid: \[1, 2, 4\]"):
        keys.generate(2, gap=3)
    with pytest.raises(ValueError, match="interpolator must be a loaded cogvideo run of stage interpolate"):
        keys.generate(2, interpolator=keys)
    with pytest.raises(ValueError, match="give clips="):
        interp.generate(2)
    metrics = keys.evaluate(4, gap=2, interpolator=interp)
    assert metrics["frames"] == 9 and 0 <= metrics["frame_accuracy"] <= 1 and "frechet_distance_frames" in metrics
    metrics = interp.evaluate(2, gap=8)
    assert metrics["frames"] == 17 and "psnr_drawn_frames" in metrics
    from hirune.cli import main

    out = chain / "cli.gif"
    assert main(["sample", str(chain / "keys"), "--n", "2", "--gap", "4", "--interpolator", str(chain / "interp"),
                 "--scale", "2", "--out", str(out)]) == 0 and out.exists()
