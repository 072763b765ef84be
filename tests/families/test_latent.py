"""Latent diffusion: a frozen autoencoder's scaled latents as the diffusion's data, samples
decoded back to images, everything else unchanged."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hirune.checkpoint import CheckpointError
from hirune.data import load_dataset
from hirune.families.latent import FirstStage
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer

UNET = {"channels": 16, "channel_mult": [1, 2], "attention_resolutions": [2], "head_channels": 16}


@pytest.fixture(scope="module")
def autoencoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    for kind in ("kl", "vq"):
        train(preset_config(f"{kind}-ae-digits", {"steps": 30, "sample_every": 0, "ckpt_every": 30,
                                                  "out": str(root / kind)}), progress=False)
    return root


def _images(name: str = "digits", split: str = "train") -> torch.Tensor:
    return load_dataset(name, split).data


def _losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _ldm(ae, out, **extra):
    return preset_config("vpred-digits", {"autoencoder": str(ae), "model_config": UNET, "steps": 4,
                                          "sample_every": 4, "num_samples": 8, "sample_steps": 2, "ckpt_every": 4,
                                          "out": str(out), **extra})


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_first_stage_encodes_scaled_latents_and_decodes_them(autoencoders, kind):
    ae = load(autoencoders / kind)
    fs = FirstStage(ae)
    x = _images(ae.data.name)[:64]
    z = fs.encode(x)
    assert z.shape == (64, 4, 4, 4) and fs.scale == pytest.approx(ae.latent_stats["scale_factor"])
    with torch.no_grad():
        ae.model.eval()
        reference = ae.model(x, sample=False).reconstruction.clamp(-1, 1)
        raw = ae.model.encode(x)
    if kind == "kl":  # the posterior mean without a generator; a sample mean + std * eps with one
        torch.testing.assert_close(z, raw.mean * fs.scale)
        eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(fs.encode(x, torch.Generator().manual_seed(3)),
                                   (raw.mean + raw.std * eps) * fs.scale)
    else:
        torch.testing.assert_close(z, raw * fs.scale)
    torch.testing.assert_close(fs.decode(z), reference, atol=1e-5, rtol=1e-5)
    if kind == "vq":  # decoding snaps a generated latent to the nearest codes
        torch.testing.assert_close(fs.decode(z + 0.01 * fs.scale * torch.randn_like(z)), reference,
                                   atol=1e-5, rtol=1e-5)
    # scaled posterior samples have unit variance, as the noise schedule assumes
    all_z = fs.encode(_images(ae.data.name)[:1000], torch.Generator().manual_seed(0))
    assert 0.95 < float(all_z.std()) < 1.05


def test_a_latent_run_trains_on_latents_and_samples_images(autoencoders, tmp_path, capsys):
    from hirune.cli import main
    from hirune.families.diffusion_eval import denoising_report
    from hirune.inference.generate import generate

    trainer = train(_ldm(autoencoders / "kl", tmp_path / "ldm"), progress=False)
    data, _ = trainer.training_data()  # the posterior moments; each step samples its latents
    torch.testing.assert_close(data, FirstStage(load(autoencoders / "kl")).moments(_images()))
    run = trainer.family
    assert run.sample_shape == (4, 4, 4) and trainer.model.config.in_channels == 4 and run.denoiser.clip_x0 is None
    assert (tmp_path / "ldm" / "samples" / "step_00000004.png").exists()
    reloaded = load(tmp_path / "ldm")
    assert reloaded.sample_shape == (4, 4, 4) and reloaded.denoiser.clip_x0 is None
    out, _ = generate(reloaded, 6, steps=2)
    assert out.x.shape == (6, 1, 8, 8) and out.x.abs().max() <= 1
    assert main(["sample", str(tmp_path / "ldm"), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s.gif")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ldm"), "--n", "20", "--steps", "2", "--nll", "5"]) == 2
    assert "latent diffusion" in capsys.readouterr().err
    # measured on the scaled latents of the test images
    errors = denoising_report(reloaded, 8)
    assert reloaded.evaluate(20, steps=2, denoising_error=8)["x0_mse_t999"] == errors["x0_mse_t999"]
    latents = reloaded.encode(_images()[:1])
    assert latents.shape == (1, 4, 4, 4) and errors["x0_mse_t999"] > errors["x0_mse_t10"] >= 0


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_inversion_and_editing_run_in_latent_space(autoencoders, tmp_path, capsys, kind):
    import json

    from hirune.cli import main
    from hirune.inference.editing import edit, invert, regenerate

    train(_ldm(autoencoders / kind, tmp_path / "ldm", class_conditional=True), progress=False)
    run = load(tmp_path / "ldm")
    with torch.no_grad():  # 4 steps leave the labels nearly unread: perturb, so that they matter
        for p in run.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = _images(run.data.name)[:3]
    noise = invert(run, x, labels=torch.tensor([1, 2, 3]), steps=8)
    assert noise.x.shape == (3, *run.sample_shape)
    # exact inversion: DDIM from the noise gives back x's latent, so the decoded image is the
    # autoencoder's own reconstruction (the ceiling of latent inversion)
    with torch.no_grad():
        back = regenerate(run, noise.x, labels=torch.tensor([1, 2, 3]), steps=8)
        ceiling = run.decode(run.encode(x))
    assert back.x.shape == x.shape
    torch.testing.assert_close(back.x, ceiling, atol=2e-3, rtol=0)
    if kind == "kl":  # (VQ decoding snaps this small a change of the latents to the same codes)
        assert not torch.allclose(regenerate(run, noise.x, labels=torch.tensor([7, 7, 7]), steps=8).x, ceiling,
                                  atol=2e-3)
    edited, latent_noise = edit(run, x[:1], 1, 7, steps=4)
    assert edited.shape == (1, 1, 8, 8) and latent_noise.shape == (1, *run.sample_shape)
    assert main(["invert", str(tmp_path / "ldm"), "test:0", "--steps", "4", "--out", str(tmp_path / "i.png")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["psnr_db"] == pytest.approx(result["autoencoder_psnr_db"], abs=0.5)
    assert main(["edit", str(tmp_path / "ldm"), "test:0", "--to", "3", "--steps", "4",
                 "--out", str(tmp_path / "e.png")]) == 0 and (tmp_path / "e.png").exists()


def test_text_and_guidance_work_in_latent_space(autoencoders, tmp_path):
    from hirune.inference.generate import generate, guide

    train(_ldm(autoencoders / "vq", tmp_path / "t", text_encoder="tiny"), progress=False)
    run = load(tmp_path / "t")
    out = generate(run, 2, "ddim", 2, prompts=["a seven", "a one"], denoiser=guide(run, "cfg", 2.0), progress=False)
    assert out[0].x.shape == (2, 1, 8, 8)
    # the same through the path, and through the family's own methods
    again = generate(str(tmp_path / "t"), 2, "ddim", 2, prompts=["a seven", "a one"],
                     denoiser=guide(str(tmp_path / "t"), "cfg", 2.0), progress=False)
    torch.testing.assert_close(again[0].x, out[0].x, rtol=0, atol=0)
    torch.testing.assert_close(run.generate(2, "ddim", 2, prompts=["a seven", "a one"], denoiser=run.guide("cfg", 2.0),
                                            progress=False)[0].x, out[0].x, rtol=0, atol=0)


def test_a_missing_first_stage_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="hirune train kl-ae-mnist5k"):
        Trainer(_ldm(tmp_path / "missing", tmp_path / "a"), distributed=False)


def test_bad_first_stages_are_named(autoencoders, tmp_path):
    plain = tmp_path / "plain"
    train(preset_config("ddpm-digits", {"steps": 2, "ckpt_every": 2, "sample_every": 0, "out": str(plain)}),
          progress=False)
    with pytest.raises(ValueError, match="must be an autoencoder run .* not a diffusion run"):
        Trainer(_ldm(plain, tmp_path / "b"), distributed=False)
    with pytest.raises(ValueError, match="trained on digits, this run is on mnist5k"):
        Trainer(preset_config("ldm-mnist5k", {"autoencoder": str(autoencoders / "kl"), "out": str(tmp_path / "c")}),
                distributed=False)
    # latent diffusion is a setting of the diffusion family only
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['autoencoder'\] for family 'classifier'"):
        Trainer(preset_config("classifier-digits", {"autoencoder": str(autoencoders / "kl"),
                                                    "out": str(tmp_path / "d")}), distributed=False)
    with pytest.raises(ValueError, match="needs an image network"):
        Trainer(preset_config("ddpm-digits", {"model": "mlp", "autoencoder": str(autoencoders / "kl"),
                                              "out": str(tmp_path / "e")}), distributed=False)


def test_a_latent_run_resumes_exactly(autoencoders, tmp_path):
    """The posterior samples come from the run's noise generator: stopping and resuming
    gives the uninterrupted run."""
    train(_ldm(autoencoders / "kl", tmp_path / "a", log_every=1, sample_every=0, ckpt_every=2), progress=False)
    train(_ldm(autoencoders / "kl", tmp_path / "b", log_every=1, sample_every=0, ckpt_every=2), stop_after=2,
          progress=False)
    train(_ldm(autoencoders / "kl", tmp_path / "b", log_every=1, sample_every=0, ckpt_every=2, resume=True),
          progress=False)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")


def test_an_exported_vq_autoencoder_keeps_its_buffers_and_scale(autoencoders, tmp_path):
    from hirune.training.export import export_weights

    file = export_weights(autoencoders / "vq", tmp_path / "vq.safetensors")
    a, b = load(autoencoders / "vq"), load(file)
    assert b.latent_stats == a.latent_stats
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k


def test_a_latent_run_outlives_its_autoencoders_directory(autoencoders, tmp_path):
    """The run keeps a copy of its first stage (RUN/references/first_stage.safetensors): with
    the autoencoder's run directory moved away it still loads, samples the same images and
    resumes training."""
    from hirune.training.export import read_weights

    ae = tmp_path / "ae"
    shutil.copytree(autoencoders / "kl", ae)
    train(_ldm(ae, tmp_path / "ldm", sample_every=0), progress=False)
    copy = tmp_path / "ldm" / "references" / "first_stage.safetensors"
    assert copy.is_file()
    weights, _ = read_weights(copy)
    original = load(ae)
    for k, v in original.model.state_dict().items():
        assert torch.equal(weights[k], v), k
    before = load(tmp_path / "ldm")
    out_before, _ = before.generate(4, steps=2, seed=5, progress=False)

    shutil.move(str(ae), str(tmp_path / "moved"))
    assert not ae.exists()
    after = load(tmp_path / "ldm")
    assert after.first_stage.scale == before.first_stage.scale
    out_after, _ = after.generate(4, steps=2, seed=5, progress=False)
    assert out_after.x.shape == (4, 1, 8, 8)
    torch.testing.assert_close(out_after.x, out_before.x, rtol=0, atol=0)
    torch.testing.assert_close(after.encode(_images()[:2]), before.encode(_images()[:2]), rtol=0, atol=0)
    resumed = train(_ldm(ae, tmp_path / "ldm", sample_every=0, steps=6, resume=True), progress=False)
    assert resumed.step == 6 and len(_losses(tmp_path / "ldm")) == 2
    # without the copy, the moved autoencoder is missed: the copy is what the run loads
    copy.unlink()
    with pytest.raises((FileNotFoundError, CheckpointError)):
        load(tmp_path / "ldm")


REFLOW_MLP = {"hidden": 32, "depth": 2}


def _flow(out, **extra):
    return preset_config("flow-two-moons", {"model_config": REFLOW_MLP, "steps": 4, "batch_size": 64, "warmup": 2,
                                            "log_every": 1, "ckpt_every": 2, "sample_every": 0, "out": str(out),
                                            **extra})


def test_a_reflow_student_outlives_its_teacher(tmp_path):
    """A reflow student stores its (noise, data) pairs in RUN/reflow_pairs.safetensors: with
    its teacher's directory deleted it loads, samples the same points, and resumes training
    exactly (the losses of the uninterrupted run); a new student of the deleted teacher
    cannot start."""
    from hirune.families.reflow import PAIRS

    teacher = tmp_path / "teacher"
    train(_flow(teacher), progress=False)
    student = {"reflow_from": str(teacher), "reflow_steps": 2}
    straight = train(_flow(tmp_path / "a", **student), progress=False)
    train(_flow(tmp_path / "b", **student), stop_after=2, progress=False)
    pairs = tmp_path / "b" / PAIRS
    assert pairs.is_file()
    z, x = straight.family.reflow_noise, straight.family.train_data.data
    assert z.shape == x.shape == load_dataset("two_moons", "train").data.shape
    assert not torch.equal(x, load_dataset("two_moons", "train").data)    # the teacher's samples
    out_before, _ = load(tmp_path / "b").generate(64, steps=2, seed=1, progress=False)

    shutil.rmtree(teacher)
    out_after, _ = load(tmp_path / "b").generate(64, steps=2, seed=1, progress=False)
    torch.testing.assert_close(out_after.x, out_before.x, rtol=0, atol=0)
    resumed = train(_flow(tmp_path / "b", resume=True, **student), progress=False)
    assert resumed.step == 4 and _losses(tmp_path / "a") == _losses(tmp_path / "b")
    torch.testing.assert_close(resumed.family.train_data.data, x.cpu(), rtol=0, atol=0)
    for (k, v), w in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k
    out, _ = load(tmp_path / "b").generate(64, steps=2, seed=1, progress=False)
    assert out.x.shape == (64, 2) and torch.isfinite(out.x).all()
    with pytest.raises((FileNotFoundError, CheckpointError)):     # no stored pairs and no teacher: nothing to train on
        train(_flow(tmp_path / "c", **student), progress=False)
