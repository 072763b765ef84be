"""`hirune import DIR`: a diffusers folder becomes an ordinary run that the ordinary commands
read.  A UNet2DModel (random weights, saved here) sampled by `hirune sample --sampler ddim`
equals diffusers' DDIMPipeline with the same noise (eta 0); every sampler runs on it;
`hirune invert` reconstructs through it; `hirune eval --nll` gives the closed-form NLL of a
network that predicts eps = 0; a class-conditional UNet2DModel takes its labels; bad folders
are refused naming the classes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from optional import lazy, needs
from hirune.cli import main
from hirune.training.diffusers_import import NO_DATASET, import_diffusers
from hirune.training.loading import load

diffusers = lazy("diffusers")
# numpy 2 notes from diffusers
pytestmark = [needs("diffusers"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS = 10  # leading spacing with n dividing T: diffusers' step() lands on its next timestep


def random_unet(std: float = 0.02, **labels) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                 norm_num_groups=8, attention_head_dim=8, **labels)
    with torch.no_grad():  # diffusers zero-initialises nothing that matters here, but make every weight count
        for p in unet.parameters():
            p.add_(std * torch.randn_like(p))
    return unet.eval()


def ddim_scheduler(prediction_type: str, T: int = 1000):
    return diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", clip_sample=False,
                                   set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                                   prediction_type=prediction_type)


def save_pipeline(out, prediction_type: str, unet=None, T: int = 1000):
    pipeline = diffusers.DDIMPipeline(unet=unet or random_unet(), scheduler=ddim_scheduler(prediction_type, T))
    pipeline.save_pretrained(out)
    return out


def cli(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


def sample_npz(run, path, *options) -> np.ndarray:
    cli("sample", run, "--n", 2, "--out", path, *options)
    return np.load(path)["samples"]


# A random network predicting eps drives DDIM's images far outside [-1, 1] (x0 ~ x / sqrt(alpha_bar)),
# where the pipeline's clamp to [0, 1] hides them; as an x0 or v prediction its images stay in range.
@pytest.mark.parametrize("prediction_type,ours", [("sample", "x0"), ("v_prediction", "v")])
def test_hirune_sample_ddim_on_the_imported_unet_equals_ddim_pipeline(prediction_type, ours, tmp_path, monkeypatch):
    from diffusers.pipelines.ddim import pipeline_ddim

    pipeline_dir = save_pipeline(tmp_path / "pipeline", prediction_type)
    cli("import", pipeline_dir / "unet", "--out", tmp_path / "run")
    run = load(tmp_path / "run")
    assert (run.cfg.model, run.process.T, run.denoiser.prediction, run.sample_shape) == ("diffusers", 1000, ours,
                                                                                         (1, 8, 8))
    assert run.data.name == NO_DATASET and run.denoiser.clip_x0 is None  # clip_sample=False
    samples = sample_npz(tmp_path / "run", tmp_path / "s.npz", "--sampler", "ddim", "--steps", STEPS,
                         "--spacing", "leading", "--seed", 3)
    # hirune starts from sigma(t_0) * randn (the marginal's noise at the grid's first time), the pipeline
    # from randn: the same draws (seed 3), given the same scale
    sigma = float(run.process.sigma(900.0))
    randn = pipeline_ddim.randn_tensor
    monkeypatch.setattr(pipeline_ddim, "randn_tensor", lambda *a, **k: sigma * randn(*a, **k))
    pipe = diffusers.DDIMPipeline.from_pretrained(pipeline_dir, local_files_only=True)
    with torch.no_grad():
        theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS,
                      eta=0.0, output_type="pt").images                         # (B, C, H, W) in [0, 1]
    ours = torch.from_numpy(samples)
    inside = ((ours > -1) & (ours < 1)).float().mean()
    ours = (ours / 2 + 0.5).clamp(0, 1)  # the pipeline's output, (B, C, H, W) for output_type "pt"
    err = (ours - theirs).abs().max().item()
    print(f"hirune sample --sampler ddim ({prediction_type}) on the imported UNet2DModel: max |hirune - "
          f"DDIMPipeline| = {err:.3g} (images in [0, 1]; {inside:.0%} of pixels unclamped)")
    assert inside > 0.5 and theirs.std() > 0.05 and err < 1e-5
    if prediction_type == "sample":  # every other sampler reads the run as well: samples of the right shape
        for sampler in ("ddpm", "dpmpp_2m", "heun", "euler_maruyama"):
            other = sample_npz(tmp_path / "run", tmp_path / f"{sampler}.npz", "--sampler", sampler, "--steps", 4)
            assert other.shape == (2, 1, 8, 8) and np.isfinite(other).all() and other.std() > 0.05, sampler


def small_eps_unet(scale: float, **labels) -> torch.nn.Module:
    """An eps network whose output layer is scaled by `scale` (0: it predicts eps = 0)."""
    unet = random_unet(**labels)
    with torch.no_grad():
        unet.conv_out.weight.mul_(scale)
        unet.conv_out.bias.mul_(scale)
    return unet


def test_hirune_invert_reconstructs_through_the_imported_unet(tmp_path, capsys):
    """Exact inversion (fixed-point steps) of a digits test image to noise and DDIM back, by
    `hirune invert`.  The fixed point contracts where the eps network's Lipschitz constant
    times sigma is small: an eps network with its output layer scaled by 0.1 (random weights
    are not a denoiser; at full scale the steps diverge), over 25 steps; float32 rounding,
    amplified by 1 / sqrt(alpha_bar), leaves ~1e-4."""
    folder = save_pipeline(tmp_path / "pipeline", "epsilon", small_eps_unet(0.1))
    cli("import", folder, "--out", tmp_path / "run", "--dataset", "digits")  # the pipeline folder opens too
    capsys.readouterr()
    cli("invert", tmp_path / "run", "test:0", "--steps", 25, "--out", tmp_path / "inv.png")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = np.load(tmp_path / "inv.npz")
    print(f"hirune invert through the imported UNet2DModel: PSNR {result['psnr_db']:.1f} dB, relative error "
          f"{result['relative_error']:.2g}")
    assert saved["noise"].std() > 0.01 and result["exact"]
    assert result["psnr_db"] > 60 and result["relative_error"] < 1e-3


def test_hirune_eval_nll_is_the_closed_form_of_a_zero_network(tmp_path, capsys):
    """A network predicting eps = 0 moves x_t = alpha(t) / alpha(s) x_s along the probability-flow
    ODE, so its density is exact: log p(y) = log N(r y; 0, sigma(T-1)^2 I) + D log r with
    r = alpha(T-1) / alpha(0) (Hutchinson's estimate of the divergence D alpha' / alpha is exact).
    `hirune eval --nll 2` on the imported run (T = 10 steps: the ODE is cut at every step) gives
    it on the dequantized digits: the scheduler's betas drive the run's process."""
    from hirune.data import load_dataset
    from hirune.data.dequantize import dequantize, discrete_nll

    folder = save_pipeline(tmp_path / "pipeline", "epsilon", small_eps_unet(0.0), T=10)
    cli("import", folder, "--out", tmp_path / "run", "--dataset", "digits")
    capsys.readouterr()
    cli("eval", tmp_path / "run", "--n", 10, "--steps", 2, "--nll", 2)
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scheduler = ddim_scheduler("epsilon", T=10)
    alpha_bar = scheduler.alphas_cumprod.double()
    r, s = (alpha_bar[-1] / alpha_bar[0]).sqrt(), (1 - alpha_bar[-1]).sqrt()
    y = dequantize(load_dataset("digits", "test").data[:2], 17, torch.Generator().manual_seed(0)).double()  # eval's u
    D = y[0].numel()
    log_p = torch.distributions.Normal(0.0, s).log_prob(r * y).flatten(1).sum(1) + D * torch.log(r)
    expected = float(discrete_nll(log_p, D, 17).mean())
    print(f"hirune eval --nll on the eps = 0 network: {metrics['nll_nats']:.4f} nats, closed form {expected:.4f}")
    assert metrics["dataset"] == "digits" and math.isfinite(metrics["frechet_distance"])
    assert abs(metrics["nll_nats"] - expected) < 1e-4 * abs(expected)


def test_a_class_conditional_unet_takes_its_labels(tmp_path, capsys):
    """UNet2DModel with num_class_embeds: the run is class-conditional on the dataset's classes,
    `hirune sample --class 3` equals diffusers' DDIM loop with class_labels 3, and guidance
    (which needs a null label UNet2DModel does not have) is refused saying so."""
    unet = random_unet(num_class_embeds=10)
    folder = save_pipeline(tmp_path / "pipeline", "sample", unet)
    cli("import", folder, "--out", tmp_path / "run", "--dataset", "digits")
    run = load(tmp_path / "run")
    assert run.config.class_conditional and run.model.num_classes == 10
    samples = torch.from_numpy(sample_npz(tmp_path / "run", tmp_path / "s.npz", "--class", 3, "--sampler", "ddim",
                                          "--steps", 4, "--spacing", "leading"))
    scheduler = ddim_scheduler("sample")
    scheduler.set_timesteps(4)
    x = float(run.process.sigma(750.0)) * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    other = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t, class_labels=torch.tensor([3, 3])).sample, t, x).prev_sample
            other = scheduler.step(unet(other, t, class_labels=torch.tensor([5, 5])).sample, t, other).prev_sample
    err = (samples - x).abs().max().item()
    print(f"hirune sample --class 3 on a class-conditional UNet2DModel: max |hirune - diffusers| = {err:.3g}; "
          f"class 5 differs by {(other - x).abs().max().item():.3g}")
    assert err < 1e-5 and (other - x).abs().max() > 1e-2
    assert main(["sample", str(tmp_path / "run"), "--class", "3", "--guidance", "cfg", "--scale", "2",
                 "--steps", "2", "--n", "2", "--out", str(tmp_path / "g.npz")]) == 2
    assert "no null label" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the network embeds 10 classes, dataset='two_moons'|holds toy examples"):
        import_diffusers(folder, tmp_path / "run2", dataset="two_moons")


def test_hirune_edit_and_the_python_entry_points_on_a_class_conditional_import(tmp_path, capsys):
    """`hirune edit` inverts a digit under its own class and resamples under --to: to its own
    class it gives the image back, to another class another image; `hirune.load` and
    `hirune.generate` read the run as any other (labels passed through)."""
    import hirune

    folder = save_pipeline(tmp_path / "pipeline", "epsilon", small_eps_unet(0.1, num_class_embeds=10))
    cli("import", folder, "--out", tmp_path / "run", "--dataset", "digits")
    psnr = {}
    for target in (0, 7):  # test:0 of the digits is a 0
        capsys.readouterr()
        cli("edit", tmp_path / "run", "test:0", "--from", 0, "--to", target, "--steps", 10, "--strength", 0.5,
            "--out", tmp_path / f"edit{target}.png")
        psnr[target] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["psnr_to_original_db"]
    print(f"hirune edit through the imported class-conditional UNet2DModel: PSNR to the original {psnr}")
    assert psnr[0] > 60 and psnr[7] < psnr[0] - 10
    run = hirune.load(tmp_path / "run")
    out, labels = hirune.generate(run, 3, "ddim", 4, label=4)
    again, _ = hirune.generate(tmp_path / "run", 3, "ddim", 4, label=4)
    assert out.x.shape == (3, 1, 8, 8) and labels.tolist() == [4, 4, 4] and torch.equal(out.x, again.x)


def test_an_unsupported_class_is_refused_naming_the_supported(tmp_path):
    vae = diffusers.VQModel(in_channels=1, out_channels=1, block_out_channels=(32,), norm_num_groups=8)
    vae.save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match=r"'VQModel'; supported classes: \['UNet2DModel', 'DiTTransformer2DModel', "
                                         r"'AutoencoderKL'\]"):
        import_diffusers(tmp_path / "vq", tmp_path / "run")


def test_missing_and_foreign_folders_and_datasets_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        import_diffusers(tmp_path / "nothing", tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a diffusers folder"):
        import_diffusers(tmp_path / "empty", tmp_path / "run")
    unet = tmp_path / "unet"
    random_unet().save_pretrained(unet)
    with pytest.raises(ValueError, match="no scheduler_config.json"):
        import_diffusers(unet, tmp_path / "run")
    ddim_scheduler("epsilon").save_pretrained(unet)  # beside the network's config.json: read from DIR itself
    with pytest.raises(ValueError, match=r"shape \(1, 28, 28\), the network takes \(1, 8, 8\) images"):
        import_diffusers(unet, tmp_path / "run", dataset="mnist5k")
    with pytest.raises(ValueError, match="unknown dataset 'nope'; valid names"):
        import_diffusers(unet, tmp_path / "run", dataset="nope")
    assert not (tmp_path / "run").exists()  # nothing written by a refused import


def test_the_import_command(tmp_path, capsys):
    folder = save_pipeline(tmp_path / "pipeline", "v_prediction")
    cli("import", folder, "--out", tmp_path / "run")
    assert "UNet2DModel, now a hirune diffusion run: v prediction over 1000 steps" in capsys.readouterr().out
    assert load(tmp_path / "run").denoiser.prediction == "v"
    cli("export", tmp_path / "run", "--format", "diffusers", "--out", tmp_path / "back")  # and back, as it came
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "back" / "unet", local_files_only=True)
    scheduler = diffusers.DDPMScheduler.from_pretrained(tmp_path / "back" / "scheduler", local_files_only=True)
    original = random_unet().state_dict()
    assert all(torch.equal(v, original[k]) for k, v in unet.state_dict().items()) and len(original) > 10
    assert scheduler.config.prediction_type == "v_prediction"
    assert torch.equal(scheduler.betas, ddim_scheduler("v_prediction").betas)
    cli("export", tmp_path / "run", "--out", tmp_path / "one.safetensors")  # one file, sampled as the run
    assert np.array_equal(sample_npz(tmp_path / "one.safetensors", tmp_path / "a.npz", "--steps", 2),
                          sample_npz(tmp_path / "run", tmp_path / "b.npz", "--steps", 2))
    assert main(["import", str(tmp_path / "nothing"), "--out", str(tmp_path / "run2")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["import", str(folder), "--out", str(tmp_path / "run")]) == 2  # exists, not empty
    assert "not an empty folder" in capsys.readouterr().err
    # a run that names no dataset: sampling works, what needs the data names the valid datasets
    for command in (["eval", str(tmp_path / "run"), "--n", "4", "--steps", "1", "--nll", "1"],
                    ["invert", str(tmp_path / "run"), "test:0", "--steps", "2", "--out", str(tmp_path / "i.png")]):
        assert main(command) == 2
        assert "unknown dataset 'none (hirune import --dataset NAME)'; valid names" in capsys.readouterr().err
