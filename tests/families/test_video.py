"""The video family (families/video.py): its settings, its draws (explicit uniform times, frame
packing's still rows drawn last), the packed loss against each still row computed alone, and a
tiny pixel-space run end to end (train, previews as strip and GIF, load, sample, evaluate)."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from hirune import objectives as O
from hirune.families import Batch
from hirune.families.video import check_frames, check_video_first_stage, frame_mask, packed_frames
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer

# pixel space (no VAE), 4 x 4 patches: 9 x 8 x 8 video tokens; a tiny network
NET = {"size": "tiny", "patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2}
TINY = {"autoencoder": "", "steps": 2, "batch_size": 4, "ckpt_every": 2, "sample_every": 2, "num_samples": 2,
        "sample_steps": 2, "log_every": 1, "model_config": NET}


def _cfg(tmp_path, **extra):
    return preset_config("cogvideox-moving-mnist5k", {**TINY, "out": str(tmp_path), **extra})


def test_settings_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"dataset='mnist5k' is not valid for family 'video'; valid: \[.*moving-mnist5k"):
        Trainer(_cfg(tmp_path, dataset="mnist5k"))
    with pytest.raises(ValueError, match="micro_crop=2 is not valid for family 'video'"):
        Trainer(_cfg(tmp_path, micro_crop=2))
    with pytest.raises(ValueError, match="class_conditional=true is not valid"):
        Trainer(_cfg(tmp_path, class_conditional=True, text_encoder=""))
    with pytest.raises(ValueError, match="weighting='likelihood' is not valid for family 'video'"):
        Trainer(_cfg(tmp_path, weighting="likelihood", explicit_uniform=False))
    with pytest.raises(ValueError, match="image_share=0.5 needs a causal video autoencoder"):
        Trainer(_cfg(tmp_path, image_share=0.5))
    with pytest.raises(ValueError, match="frames=8 is not valid; valid: 4k\\+1"):
        check_frames(8)
    for frames in (1, 5, 9, 17):
        check_frames(frames)
    image_ae = SimpleNamespace(data=SimpleNamespace(kind="image", name="mnist5k"))
    with pytest.raises(ValueError, match="is an image autoencoder .trained on mnist5k.; a video run needs"):
        check_video_first_stage("runs/kl-ae-mnist5k", image_ae)
    check_video_first_stage("runs/v", SimpleNamespace(data=SimpleNamespace(kind="video", name="moving-mnist5k")))


def test_draw_explicit_uniform_and_still_rows_drawn_last(tmp_path):
    family = Trainer(_cfg(tmp_path)).family
    d = family.draw(8, torch.Generator().manual_seed(0))
    strata = torch.arange(8) * family.process.T / 8
    assert ((d.t >= strata.floor()) & (d.t < strata + family.process.T / 8)).all() and d.still is None
    family.config = dataclasses.replace(family.config, image_share=0.5)  # the setting alone: the draws before it
    e = family.draw(8, torch.Generator().manual_seed(0))
    assert torch.equal(d.t, e.t) and torch.equal(d.noise, e.noise) and e.still.dtype == torch.bool


def test_packed_still_rows_score_their_first_frame_alone(tmp_path):
    """A still row's loss is the loss of its first latent frame alone (the network told frames=1, the loss counting
    that frame only); the video rows' losses are unchanged.  Without the mask the still rows score otherwise."""
    trainer = Trainer(_cfg(tmp_path))
    family, model = trainer.family, trainer.model
    torch.manual_seed(0)
    for p in model.parameters():  # wake the zero-initialised modulations and output
        p.data.add_(0.05 * torch.randn_like(p))
    n = 4
    d = family.draw(n, torch.Generator().manual_seed(1))
    d.still = torch.tensor([True, False, True, False])
    idx = torch.arange(n)
    batch = Batch(family.train_data.data[idx], None, idx)
    with torch.no_grad():
        packed = family.loss(model, batch, d, 0).per_sample
        plain = family.loss(model, batch, dataclasses.replace(d, still=torch.zeros(n, dtype=torch.bool)), 0).per_sample
        for row in (0, 2):
            cond = family.text(family.captioner.captions(idx[row:row + 1], d.template[row:row + 1],
                                                         d.drop[row:row + 1] if d.drop is not None else None,
                                                         still=d.still[row:row + 1]))
            alone = O.regression_loss(model, family.process, batch.x[row:row + 1, :, :1], target="v",
                                      noise=d.noise[row:row + 1, :, :1], t=d.t[row:row + 1], cond=cond)
            torch.testing.assert_close(packed[row], alone.per_sample[0], rtol=1e-4, atol=1e-6)
            assert abs(float(plain[row] - alone.per_sample[0])) > 1e-3  # the unpacked row is another loss
        torch.testing.assert_close(packed[[1, 3]], plain[[1, 3]])


def test_frame_mask_and_counts():
    still = torch.tensor([True, False])
    frames = packed_frames(still, 3)
    assert frames.tolist() == [1, 3]
    assert frame_mask(frames, 3).tolist() == [[1, 0, 0], [1, 1, 1]]


def test_regression_loss_mask_is_the_mean_over_the_kept_elements():
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    from hirune import DiscreteVP

    process, t = DiscreteVP("linear"), torch.tensor([10.0, 500.0, 900.0])
    net = lambda x, t: 0.5 * x  # noqa: E731
    mask = torch.zeros(3, 1, 4, 1)
    mask[:, :, :2] = 1
    masked = O.regression_loss(net, process, x0, target="v", noise=noise, t=t, mask=mask).per_sample
    cut = O.regression_loss(net, process, x0[:, :, :2], target="v", noise=noise[:, :, :2], t=t).per_sample
    torch.testing.assert_close(masked, cut)


@pytest.mark.slow  # covered at tiny by a reproduce note; opt in with --runslow (the suite's 10-minute budget)
@pytest.mark.filterwarnings("ignore")
def test_tiny_pixel_run_end_to_end(tmp_path):
    from hirune.training.loading import load
    from hirune.training.loop import train

    train(_cfg(tmp_path))
    assert (tmp_path / "samples" / "step_00000002.png").exists() and (tmp_path / "samples" / "step_00000002.gif").exists()
    run = load(tmp_path)
    out, labels = run.generate(3, steps=2, motion="moving left", progress=False)
    assert out.x.shape == (3, 1, 9, 32, 32) and labels.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="motion='sideways' is not valid; valid:"):
        run.generate(2, steps=2, motion="sideways", progress=False)
    report = run.evaluate(4, steps=2)
    for key in ("frame_accuracy", "direction_accuracy", "temporal_consistency", "real_frame_accuracy"):
        assert 0.0 <= report[key] <= 1.0


def test_the_word_tokenizer_knows_the_motions(tmp_path):
    """The tiny text encoder of a video run reads every word of the clips' captions (the digit captions' vocabulary
    would turn 'moving', 'bouncing', 'fast' into [UNK])."""
    from hirune.data.captions import training_vocabulary
    from hirune.data.video_captions import video_caption
    from hirune.models.text import UNK, WordTokenizer

    family = Trainer(_cfg(tmp_path)).family
    caption = [video_caption(7, "bouncing left")]
    assert UNK not in family.text.encode(caption)[0][0].tolist()
    assert UNK in WordTokenizer(training_vocabulary())(caption)[0][0].tolist()  # the check can fail


def test_clips_go_to_the_video_family(tmp_path):
    with pytest.raises(ValueError, match="dataset='moving-mnist5k' holds video data, which family 'diffusion' does "
                                         "not model; valid: family=video"):
        Trainer(preset_config("vpred-mnist5k", {"dataset": "moving-mnist5k", "out": str(tmp_path)}))
