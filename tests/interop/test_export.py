"""`hirune export RUN --format diffusers`: the folder loads in diffusers offline
(`from_pretrained(..., local_files_only=True)`) and computes hirune's function to 1e-5 in
float32: the DiT as DiTTransformer2DModel (after `use_dit_frequencies`, measured without it
too), the scheduler's betas and prediction, the KL autoencoder as AutoencoderKL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from optional import lazy, needs
from hirune.training import TrainConfig, load, train
from hirune.training.export import export_weights, read_weights

diffusers = lazy("diffusers")
pytestmark = needs("diffusers")


COMMON = dict(dataset="digits", steps=2, batch_size=16, lr=1e-3, warmup=1, log_every=1, ckpt_every=2,
              sample_every=0)


def perturbed_export(run_dir, out, std: float = 0.05):
    """The run exported to one file with every weight given random noise: a trained-looking
    network (adaLN-Zero starts at exactly 0, which would hide a wrong mapping)."""
    weights, meta = read_weights(export_weights(run_dir))
    g = torch.Generator().manual_seed(0)
    noisy = {k: v + std * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in weights.items()}
    save_file(noisy, str(out), metadata={"hirune": json.dumps(meta)})
    return out


@pytest.fixture(scope="module")
def dit_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dit")
    cfg = TrainConfig.from_dict(dict(COMMON, model="dit", model_config={"size": "T/2", "depth": 2},
                                     class_conditional=True, process="ddpm", objective="hybrid",
                                     out=str(tmp / "run")))
    train(cfg, progress=False)
    return perturbed_export(tmp / "run", tmp / "dit.safetensors")


def test_dit_export_loads_in_diffusers_and_equals_hirune(dit_file, tmp_path):
    from hirune.training.diffusers_export import export_diffusers, use_dit_frequencies

    out = export_diffusers(dit_file, tmp_path / "dit-diffusers")
    ours = load(dit_file)
    theirs = diffusers.DiTTransformer2DModel.from_pretrained(out / "transformer", local_files_only=True).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 8, 8, generator=g)
    t, y = torch.tensor([0.0, 17.0, 500.0, 999.0]), torch.tensor([0, 3, 9, 10])  # 10: the null label
    with torch.no_grad():
        expected = ours.model(x, t, y)
        stock = theirs(x, t, class_labels=y).sample
        use_dit_frequencies(theirs)
        got = theirs(x, t, class_labels=y).sample
    assert got.shape == expected.shape == (4, 2, 8, 8)  # learned sigma: (eps | v) on dim 1 in both
    assert expected.abs().mean() > 0.05
    err = (got - expected).abs().max().item()
    print(f"DiT export: max |diffusers - hirune| = {err:.3g}; stock frequencies: "
          f"{(stock - expected).abs().max().item():.3g}")
    assert err < 1e-5
    assert (stock - expected).abs().max() > 1e-3  # diffusers' own frequencies: another function


def test_dit_export_scheduler_is_the_runs_process(dit_file, tmp_path):
    from hirune.training.diffusers_export import export_diffusers

    out = export_diffusers(dit_file, tmp_path / "dit-diffusers")
    ours = load(dit_file)
    scheduler = diffusers.DDPMScheduler.from_pretrained(out / "scheduler", local_files_only=True)
    assert scheduler.config.num_train_timesteps == ours.process.T == 1000
    assert scheduler.config.prediction_type == "epsilon" and scheduler.config.variance_type == "learned_range"
    assert (scheduler.alphas_cumprod.double() - ours.process.alphas_cumprod).abs().max() < 1e-6  # float32
    assert (torch.tensor(scheduler.config.trained_betas, dtype=torch.float64) - ours.process.betas).abs().max() == 0
    ddim = diffusers.DDIMScheduler.from_pretrained(out / "scheduler", local_files_only=True)  # same config
    assert ddim.config.prediction_type == "epsilon"


@pytest.fixture(scope="module")
def autoencoder_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ae")
    cfg = TrainConfig.from_dict(dict(COMMON, family="autoencoder", model="kl_autoencoder",
                                     model_config={"size": "f2", "z_channels": 2}, out=str(tmp / "run")))
    train(cfg, progress=False)
    return perturbed_export(tmp / "run", tmp / "ae.safetensors", std=0.02)


def test_autoencoder_export_loads_as_autoencoder_kl_and_equals_hirune(autoencoder_file, tmp_path):
    from hirune.training.diffusers_export import export_diffusers

    out = export_diffusers(autoencoder_file, tmp_path / "vae")
    ours = load(autoencoder_file)
    theirs = diffusers.AutoencoderKL.from_pretrained(out, local_files_only=True).eval()
    assert theirs.config.scaling_factor == pytest.approx(ours.latent_stats["scale_factor"], rel=1e-12)
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        q, dist = ours.model.encode(x), theirs.encode(x).latent_dist
        decoded, their_decoded = ours.model.decode(q.mean), theirs.decode(dist.mean).sample
    errs = [(q.mean - dist.mean).abs().max().item(), (q.logvar - dist.logvar).abs().max().item(),
            (decoded - their_decoded).abs().max().item()]
    print(f"AutoencoderKL export: max |diffusers - hirune| mean, logvar, decode = {errs}")
    assert decoded.abs().mean() > 0.01
    assert max(errs) < 1e-5


# one refusal (`run.cfg.model != "dit"`) for every network but the DiT: U-ViT and flows only with --runslow
@pytest.mark.parametrize("kind", ["mlp", "unet", pytest.param("uvit", marks=pytest.mark.slow),
                                  pytest.param("normalizing_flow", marks=pytest.mark.slow)])
def test_unsupported_runs_are_refused_naming_the_supported(kind, tmp_path):
    """UNet, U-ViT, MLP and flow runs (one step each) are refused naming what diffusers' format takes."""
    from hirune.training.diffusers_export import export_diffusers

    settings = {"mlp": dict(dataset="two_moons", model="mlp", model_config={"hidden": 16, "depth": 2}),
                "unet": dict(model="unet", model_config={"channels": 8, "channel_mult": [1], "num_res_blocks": 1,
                                                         "attention_resolutions": []}),
                "uvit": dict(model="uvit", model_config={"hidden_size": 16, "depth": 1, "num_heads": 2,
                                                         "patch_size": 4}),
                "normalizing_flow": dict(family="normalizing_flow", model="normalizing_flow",
                                         model_config={"levels": 1, "steps": 1, "hidden": 8})}[kind]
    cfg = TrainConfig.from_dict({**COMMON, "steps": 1, "ckpt_every": 1, **settings, "out": str(tmp_path / "run")})
    train(cfg, progress=False)
    family = settings.get("family", "diffusion")
    with pytest.raises(ValueError, match=rf"^a {family} run of model '{kind}' cannot be exported in diffusers' "
                                         r"format; supported: a diffusion run of a DiT .*; a kl_autoencoder run; "
                                         r"a run written by `hirune import`"):
        export_diffusers(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_command_writes_the_folder_and_refuses_in_one_line(dit_file, tmp_path, capsys):
    from hirune.cli import main

    assert main(["export", str(dit_file), "--format", "diffusers", "--out", str(tmp_path / "d")]) == 0
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"transformer", "scheduler", "hirune.json"}
    assert "diffusers" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nothing"), "--format", "diffusers"]) == 2


def test_a_latent_class_conditional_dit_exports_as_a_dit_pipeline(autoencoder_file, tmp_path):
    """DiT on the KL autoencoder's latents, class-conditional: a DiTPipeline folder (transformer,
    vae with the latent scale, scheduler); the pipeline loads offline and runs."""
    from hirune.training.diffusers_export import export_diffusers, use_dit_frequencies

    ae_run = autoencoder_file.parent / "run"
    cfg = TrainConfig.from_dict(dict(COMMON, model="dit", model_config={"size": "T/2", "depth": 2},
                                     class_conditional=True, process="ddpm", autoencoder=str(ae_run),
                                     out=str(tmp_path / "ldm")))
    train(cfg, progress=False)
    run_file = perturbed_export(tmp_path / "ldm", tmp_path / "ldm.safetensors")
    out = export_diffusers(run_file, tmp_path / "pipe")
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "DiTPipeline"
    pipe = diffusers.DiTPipeline.from_pretrained(out, local_files_only=True)
    use_dit_frequencies(pipe.transformer)
    ours = load(run_file)
    assert pipe.vae.config.scaling_factor == pytest.approx(ours.first_stage.scale, rel=1e-12)
    c, size = ours.model.config.in_channels, ours.model.config.image_size
    x, t, y = torch.randn(2, c, size, size), torch.tensor([3.0, 700.0]), torch.tensor([1, 10])
    with torch.no_grad():
        err = (pipe.transformer(x, t, class_labels=y).sample - ours.model(x, t, y)).abs().max().item()
        z = torch.randn(2, ours.first_stage.model.config.z_channels, 4, 4)
        decode_err = (pipe.vae.decode(z).sample - ours.first_stage.model.decode(z)).abs().max().item()
        images = pipe(class_labels=[1, 2], num_inference_steps=2, guidance_scale=1.0, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    print(f"DiTPipeline export: transformer {err:.3g}, vae decode {decode_err:.3g}")
    assert err < 1e-5 and decode_err < 1e-5
    assert images.shape == (2, 8, 8, 1)
    # and back: `hirune import` of the pipeline folder is a latent run again, its vae/ the first stage
    from hirune.cli import main

    assert main(["import", str(out), "--out", str(tmp_path / "back"), "--dataset", "digits"]) == 0
    back = load(tmp_path / "back")
    assert back.first_stage.scale == pytest.approx(ours.first_stage.scale, rel=1e-12)
    assert back.sample_shape == ours.sample_shape == (2, 4, 4) and back.data.shape == (1, 8, 8)
    with torch.no_grad():
        assert (back.first_stage.model.decode(z) - ours.first_stage.model.decode(z)).abs().max() < 1e-5
    assert main(["sample", str(tmp_path / "back"), "--class", "1", "--steps", "2", "--n", "2",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (2, 1, 8, 8)  # decoded images


def test_an_exported_dit_imports_back_as_a_learned_variance_denoiser(dit_file, tmp_path):
    """The round trip through diffusers' folder: `hirune import` of the transformer/ folder reads
    the scheduler/ beside it (eps, learned_range -> learned variance, the same betas) and its
    network is diffusers' DiT (diffusers' own time frequencies: no `use_dit_frequencies` here)."""
    from hirune.sampling import ddim
    from hirune.sampling.timesteps import time_grid
    from hirune.training.diffusers_export import export_diffusers
    from hirune.training.diffusers_import import import_diffusers

    out = export_diffusers(dit_file, tmp_path / "dit-diffusers")
    run = load(import_diffusers(out / "transformer", tmp_path / "run"))
    ours = load(dit_file)
    assert run.denoiser.prediction == "eps" and run.denoiser.learned_variance and run.model.num_classes == 10
    assert run.config.objective == "hybrid" and run.config.class_conditional
    assert torch.equal(run.process.betas, ours.process.betas.float().double())
    theirs = diffusers.DiTTransformer2DModel.from_pretrained(out / "transformer", local_files_only=True).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([5.0, 600.0]), torch.tensor([2, 10])
    with torch.no_grad():
        assert torch.equal(run.model(x, t, y), theirs(x, t, class_labels=y).sample)
        assert torch.equal(run.model(x, t), theirs(x, t, class_labels=torch.tensor([10, 10])).sample)
        samples = ddim(run.denoiser, x, time_grid(run.process, 4), cond={"y": y}).x
    assert samples.shape == x.shape and torch.isfinite(samples).all()
    from hirune.cli import main  # DiT has a null label: classifier-free guidance through the command

    assert main(["sample", str(tmp_path / "run"), "--class", "3", "--guidance", "cfg", "--scale", "2", "--steps", "2",
                 "--n", "2", "--out", str(tmp_path / "s.npz")]) == 0


def test_an_autoencoder_kl_folder_imports_into_hirunes_kl_autoencoder(autoencoder_file, tmp_path):
    """The way back for the autoencoder: AutoencoderKL folder -> hirune KLAutoencoder (same
    weights, exact), scaling_factor returned; another class refused naming AutoencoderKL."""
    from hirune.training.diffusers_export import export_diffusers
    from hirune.training.diffusers_import import autoencoder_from_diffusers

    out = export_diffusers(autoencoder_file, tmp_path / "vae")
    model, scale = autoencoder_from_diffusers(out)
    ours = load(autoencoder_file)
    assert scale == pytest.approx(ours.latent_stats["scale_factor"], rel=1e-12)
    expected = ours.model.state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    z = torch.randn(2, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(model.decode(z), ours.model.decode(z))
    with pytest.raises(ValueError, match=r"valid: \['AutoencoderKL'\]"):
        autoencoder_from_diffusers(_unet_folder(tmp_path))


def _unet_folder(tmp_path):
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
                                 norm_num_groups=8, attention_head_dim=8, layers_per_block=1,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D",) * 2)
    unet.save_pretrained(tmp_path / "unet")
    return tmp_path / "unet"
