"""Latent diffusion: a frozen autoencoder's scaled latents as the diffusion's data, samples
decoded back to images, everything else unchanged."""

from __future__ import annotations

import pytest
import torch

from hirune.latent import FirstStage
from hirune.presets import preset_config
from hirune.trainer import Run, load_run, train

UNET = {"channels": 16, "channel_mult": [1, 2], "attention_resolutions": [2], "head_channels": 16}


@pytest.fixture(scope="module")
def autoencoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("ae")
    for kind in ("kl", "vq"):
        train(preset_config(f"{kind}-ae-digits", {"steps": 30, "sample_every": 0, "ckpt_every": 30,
                                                  "out": str(root / kind)}), progress=False)
    return root


def _ldm(ae, out, **extra):
    return preset_config("vpred-digits", {"autoencoder": str(ae), "model_config": UNET, "steps": 4,
                                          "sample_every": 4, "num_samples": 8, "sample_steps": 2, "ckpt_every": 4,
                                          "out": str(out), **extra})


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_first_stage_encodes_scaled_latents_and_decodes_them(autoencoders, kind):
    ae = load_run(autoencoders / kind)
    fs = FirstStage(autoencoders / kind)
    x = ae.data.data[:64]
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
    all_z = fs.encode(ae.data.data[:1000], torch.Generator().manual_seed(0))
    assert 0.95 < float(all_z.std()) < 1.05


def test_a_latent_run_trains_on_latents_and_samples_images(autoencoders, tmp_path, capsys):
    from hirune.cli import main
    from hirune.generate import sample_run

    run = train(_ldm(autoencoders / "kl", tmp_path / "ldm"), progress=False)
    data, _ = run.batch_source()  # the posterior moments; each step samples its latents
    torch.testing.assert_close(data, FirstStage(autoencoders / "kl").moments(run.data.data))
    assert run.sample_shape == (4, 4, 4) and run.model.config.in_channels == 4 and run.denoiser.clip_x0 is None
    assert (tmp_path / "ldm" / "samples" / "step_00000004.png").exists()
    reloaded = load_run(tmp_path / "ldm")
    out, _ = sample_run(reloaded, 6, steps=2)
    assert out.x.shape == (6, 1, 8, 8) and out.x.abs().max() <= 1
    assert main(["sample", str(tmp_path / "ldm"), "--n", "4", "--steps", "2", "--out", str(tmp_path / "s.gif")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ldm"), "--n", "20", "--steps", "2", "--nll", "5"]) == 2
    assert "latent diffusion" in capsys.readouterr().err
    from hirune.evaluation import denoising_report   # measured on the scaled latents of the test images

    errors = denoising_report(reloaded, 8)
    latents = reloaded.encode(reloaded.data.data[:1])
    assert latents.shape == (1, 4, 4, 4) and errors["x0_mse_t999"] > errors["x0_mse_t10"] >= 0


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_inversion_and_editing_run_in_latent_space(autoencoders, tmp_path, capsys, kind):
    import json

    from hirune.cli import main
    from hirune.editing import edit, invert, regenerate

    train(_ldm(autoencoders / kind, tmp_path / "ldm", class_conditional=True), progress=False)
    run = load_run(tmp_path / "ldm")
    with torch.no_grad():  # 4 steps leave the labels nearly unread: perturb, so that they matter
        for p in run.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = run.data.data[:3]
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
    from hirune.generate import generate, guide

    run = train(_ldm(autoencoders / "vq", tmp_path / "t", text_encoder="tiny"), progress=False)
    out = generate(run, 2, "ddim", 2, prompts=["a seven", "a one"], denoiser=guide(run, "cfg", 2.0), progress=False)
    assert out[0].x.shape == (2, 1, 8, 8)


def test_bad_first_stages_are_named(autoencoders, tmp_path):
    with pytest.raises(FileNotFoundError, match="hirune train kl-ae-mnist5k"):
        Run(_ldm(tmp_path / "missing", tmp_path / "a"), distributed=False)
    plain = tmp_path / "plain"
    train(preset_config("ddpm-digits", {"steps": 2, "ckpt_every": 2, "sample_every": 0, "out": str(plain)}),
          progress=False)
    with pytest.raises(ValueError, match="not an autoencoder"):
        Run(_ldm(plain, tmp_path / "b"), distributed=False)
    with pytest.raises(ValueError, match="trained on digits, this run is on mnist5k"):
        Run(preset_config("ldm-mnist5k", {"autoencoder": str(autoencoders / "kl"), "out": str(tmp_path / "c")}),
            distributed=False)
    with pytest.raises(ValueError, match="applies to diffusion, score and flow-matching runs"):
        Run(preset_config("classifier-digits", {"autoencoder": str(autoencoders / "kl"), "out": str(tmp_path / "d")}),
            distributed=False)


def test_a_latent_run_resumes_exactly(autoencoders, tmp_path):
    """The posterior samples come from the run's noise generator: stopping and resuming
    gives the uninterrupted run."""
    import json

    def losses(d):
        return [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]

    train(_ldm(autoencoders / "kl", tmp_path / "a", log_every=1, sample_every=0, ckpt_every=2), progress=False)
    train(_ldm(autoencoders / "kl", tmp_path / "b", log_every=1, sample_every=0, ckpt_every=2), stop_after=2,
          progress=False)
    train(_ldm(autoencoders / "kl", tmp_path / "b", log_every=1, sample_every=0, ckpt_every=2, resume=True),
          progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_an_exported_vq_autoencoder_keeps_its_buffers_and_scale(autoencoders, tmp_path):
    from hirune.export import export_weights

    file = export_weights(autoencoders / "vq", tmp_path / "vq.safetensors")
    a, b = load_run(autoencoders / "vq"), load_run(file)
    assert b.latent_stats == a.latent_stats
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v), k
