"""DDIM inversion of video (inference/video_inversion.py) on a tiny pixel-space video run:
the exact inversion returns the clip; reference attention to an exact inversion's own
trajectory changes nothing (a row whose reference is itself), while a reference read at the
wrong times is caught; the trajectory is keyed by the grid's times; the inverse process
without the SNR shift is the unshifted schedule; the masks and PSNR are checked against
hand-made clips; runs that are not video runs are refused."""

from __future__ import annotations

import pytest
import torch

from hirune.inference import video_inversion as V
from hirune.training.presets import preset_config

NET = {"size": "tiny", "patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2}
TINY = {"autoencoder": "", "steps": 2, "batch_size": 4, "ckpt_every": 2, "sample_every": 0, "num_samples": 2,
        "sample_steps": 2, "log_every": 1, "model_config": NET,
        "process_config": {"schedule": "scaled_linear", "zero_terminal_snr": True, "snr_shift": 3.0}}
PROMPTS = ["a digit 3 moving left", "a digit 7 moving up"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from hirune.training.loop import train

    out = tmp_path_factory.mktemp("video-run")
    train(preset_config("cogvideox-moving-mnist5k", {**TINY, "out": str(out)}))
    return out


@pytest.fixture(scope="module")
def run(run_dir):
    from hirune.training.loading import load

    run = load(run_dir)
    with torch.no_grad():  # every weight moved, so the network's output depends on all of it
        g = torch.Generator().manual_seed(0)
        for p in run.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return run


@pytest.fixture(scope="module")
def clips():
    from hirune.data.moving import moving_digits

    return moving_digits("test", frames=9).data[:2]


def test_exact_inversion_returns_the_clip_and_keeps_its_trajectory(run, clips):
    inv = V.invert(run, clips, PROMPTS, steps=6, exact=True)
    assert sorted(inv.trajectory) == sorted(inv.ts.tolist()) and inv.at(float(inv.ts[0])) is inv.noise
    with pytest.raises(ValueError, match="not a time of the inversion's grid"):
        inv.at(float(inv.ts[0]) + 7.5)
    back, _ = V.reconstruct(run, inv, PROMPTS)
    assert V.psnr(back, clips).min() > 60
    plain = V.invert(run, clips, PROMPTS, steps=6)
    assert V.psnr(V.reconstruct(run, plain, PROMPTS)[0], clips).max() < 60     # plain inversion drifts


def test_reference_attention_to_its_own_trajectory_changes_nothing(run, clips, monkeypatch):
    """From an exact inversion's noise at scale 1 the resampled latents are the trajectory's
    at every time, so each row's reference is itself and the output is the plain one.  Read
    at the wrong time (the trajectory reversed), the references pull the rows away."""
    inv = V.invert(run, clips, PROMPTS, steps=6, exact=True)
    _, plain = V.reconstruct(run, inv, PROMPTS)                                # latents: not clamped
    _, injected = V.reconstruct(run, inv, PROMPTS, reference=True)
    assert (injected - plain).abs().max() < 1e-5
    times = sorted(inv.trajectory)
    reversed_times = dict(zip(times, reversed(times)))
    at = V.Inversion.at
    monkeypatch.setattr(V.Inversion, "at", lambda self, t: at(self, reversed_times[at_time(times, t)]))
    _, wrong = V.reconstruct(run, inv, PROMPTS, reference=True)
    assert (wrong - plain).abs().max() > 5e-4                                  # measured: 1.4e-3 against 6e-7


def at_time(times, t):
    return min(times, key=lambda s: abs(s - t))


def test_guided_reconstruction_reads_the_references_in_both_halves(run, clips):
    """Under classifier-free guidance the batch is twice the rows; each half reads the same
    reference rows, and fresh noise can start the reconstruction (the ablation)."""
    inv = V.invert(run, clips, PROMPTS, steps=4)
    fresh = torch.randn(inv.noise.shape, generator=torch.Generator().manual_seed(1))
    guided, latents = V.reconstruct(run, inv, PROMPTS[::-1], scale=6.0, reference=True, noise=fresh)
    assert guided.shape == clips.shape and latents.shape == inv.latents.shape and torch.isfinite(guided).all()
    with pytest.raises(ValueError, match="give one per clip"):
        V.reconstruct(run, inv, PROMPTS[:1])


def test_the_inverse_process_without_the_snr_shift(run):
    from hirune.process import make_process

    shifted, dropped = run.process, V.inverse_process(run, drop_snr_shift=True)
    plain = make_process("ddpm", schedule="scaled_linear", zero_terminal_snr=True)
    t = torch.tensor([100.0, 500.0, 900.0])
    assert torch.allclose(dropped.alpha(t), plain.alpha(t))
    assert (shifted.alpha(t) - dropped.alpha(t)).abs().max() > 0.05          # the shift lowers every SNR
    assert V.inverse_process(run) is run.process


def test_diffusers_inverse_scheduler_drops_the_shift_as_inverse_process_does(run):
    """The note's inverse scheduler, `DDIMInverseScheduler(**CogVideoXDDIMScheduler.config)`,
    takes the config without a word and walks the unshifted schedule: its alphas_cumprod are
    `inverse_process(drop_snr_shift=True)`'s, not the sampler's."""
    diffusers = pytest.importorskip("diffusers")
    sampler = diffusers.CogVideoXDDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                               snr_shift_scale=3.0, rescale_betas_zero_snr=True,
                                               timestep_spacing="trailing", prediction_type="v_prediction")
    inverse = diffusers.DDIMInverseScheduler(**sampler.config)
    assert "snr_shift_scale" not in inverse.config
    dropped, shifted = V.inverse_process(run, drop_snr_shift=True), run.process
    assert torch.allclose(dropped.alphas_cumprod.float(), inverse.alphas_cumprod.float(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(shifted.alphas_cumprod.float(), sampler.alphas_cumprod.float(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(shifted.alphas_cumprod.float(), inverse.alphas_cumprod.float(), rtol=1e-2)


def test_masks_psnr_and_refusals(run):
    clip = -torch.ones(1, 1, 2, 16, 16)
    clip[0, 0, 0, 8, 8] = 1.0                                                 # one ink pixel in frame 0
    out = V.outside_digit(clip, margin=2)
    assert out[0, 0, 1].all() and not out[0, 0, 0, 6:11, 6:11].any() and out[0, 0, 0].sum() == 256 - 25
    noisy = clip + 0.1 * (~out)                                               # changed near the digit only
    assert V.psnr(noisy, clip, out).item() > 200 and abs(V.psnr(clip + 0.1, clip).item() - 26.0206) < 1e-3
    with pytest.raises(ValueError, match="needs a text-conditioned video run"):
        V.check_video_run(type("Run", (), {"name": "diffusion", "text": None})())


def test_hirune_invert_and_edit_a_clip(run_dir, tmp_path, capsys):
    import json

    from hirune.cli import main

    assert main(["invert", str(run_dir), "test:1", "--steps", "3", "--reference", "--out",
                 str(tmp_path / "inv.gif")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["psnr_db"] > 0 and printed["reference"] and (tmp_path / "inv.gif").exists()
    assert main(["edit", str(run_dir), "test:1", "--to", "a digit 2 moving left", "--scale", "3", "--steps", "3",
                 "--plain", "--out", str(tmp_path / "edit.png")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(printed["frame_classes"]) == 9 and printed["from"].startswith("a ") and (tmp_path / "edit.png").exists()
    for argv, message in ((["invert", str(run_dir), "test:1", "--class", "3"], "--class is not valid for a video"),
                          (["edit", str(run_dir), "test:1", "--to", "x", "--out", "e.jpg"], "valid: a .gif, .mp4"),
                          (["invert", str(run_dir), "cat.png"], "valid: test:N or train:N"),
                          (["sample", str(run_dir), "--gap", "2"], "--gap and --interpolator apply to cogvideo")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
