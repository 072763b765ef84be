"""`hirune import DIR`: a diffusers UNet2DModel (random weights, saved here) sampled by
hirune's DDIM equals diffusers' DDIMPipeline with the same noise (eta 0), hirune's exact
inversion reconstructs an image through it, and bad folders are refused naming the classes."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 notes from diffusers

from hirune.sampling import ddim  # noqa: E402
from hirune.sampling.inversion import ddim_invert  # noqa: E402
from hirune.sampling.timesteps import time_grid  # noqa: E402
from hirune.training.diffusers_import import import_diffusers, load_imported, open_diffusers  # noqa: E402

STEPS = 10  # leading spacing with n dividing T: diffusers' step() lands on its next timestep


def random_unet(std: float = 0.02) -> torch.nn.Module:
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32),
                                 down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                 norm_num_groups=8, attention_head_dim=8)
    with torch.no_grad():  # diffusers zero-initialises nothing that matters here, but make every weight count
        for p in unet.parameters():
            p.add_(std * torch.randn_like(p))
    return unet.eval()


def save_pipeline(out, prediction_type: str):
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading",
                                        prediction_type=prediction_type)
    diffusers.DDIMPipeline(unet=random_unet(), scheduler=scheduler).save_pretrained(out)
    return out


# A random network predicting eps drives DDIM's images far outside [-1, 1] (x0 ~ x / sqrt(alpha_bar)),
# where the pipeline's clamp to [0, 1] hides them; as an x0 or v prediction its images stay in range.
@pytest.mark.parametrize("prediction_type,ours", [("sample", "x0"), ("v_prediction", "v")])
def test_hirune_ddim_on_the_imported_unet_equals_ddim_pipeline(prediction_type, ours, tmp_path):
    pipeline_dir = save_pipeline(tmp_path / "pipeline", prediction_type)
    run = load_imported(import_diffusers(pipeline_dir / "unet", tmp_path / "run"))
    assert run.process.T == 1000 and run.denoiser.prediction == ours and run.sample_shape == (1, 8, 8)
    pipe = diffusers.DDIMPipeline.from_pretrained(pipeline_dir, local_files_only=True)
    with torch.no_grad():
        theirs = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS,
                      eta=0.0, output_type="pt").images                         # (B, C, H, W) in [0, 1]
        noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # randn_tensor's draw
        ts = time_grid(run.process, STEPS, "leading")
        ours = ddim(run.denoiser, noise, ts).x
    inside = ((ours > -1) & (ours < 1)).float().mean()
    ours = (ours / 2 + 0.5).clamp(0, 1)  # the pipeline's output, (B, C, H, W) for output_type "pt"
    err = (ours - theirs).abs().max().item()
    print(f"DDIM ({prediction_type}) on the imported UNet2DModel: max |hirune - DDIMPipeline| = {err:.3g} "
          f"(images in [0, 1]; {inside:.0%} of pixels unclamped)")
    assert inside > 0.5 and theirs.std() > 0.05 and err < 1e-5


def test_exact_inversion_through_the_imported_unet_reconstructs(tmp_path):
    """An image in [-1, 1] inverted to noise by hirune's exact inversion (fixed-point steps) and
    sampled back by DDIM through the imported network, in float64 (in float32 rounding, amplified
    by 1 / sqrt(alpha_bar), leaves ~4e-4).  The fixed point contracts where the eps network's
    Lipschitz constant times sigma is small: an eps network with its output layer scaled by 0.1
    (random weights are not a denoiser; at full scale 10 steps diverge), over 50 steps."""
    folder = save_pipeline(tmp_path / "pipeline", "epsilon")
    run = open_diffusers(folder)  # the pipeline folder itself opens too
    with torch.no_grad():
        run.model.net.conv_out.weight.mul_(0.1)
        run.model.net.conv_out.bias.mul_(0.1)
    run.model.double()
    ts = time_grid(run.process, 50, "leading")
    image = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        noise = ddim_invert(run.denoiser, image, ts, exact=True).x
        again = ddim(run.denoiser, noise, ts).x
    err = (again - image).abs().max().item()
    print(f"exact inversion through the imported UNet2DModel (float64): max |reconstruction - image| = {err:.3g}")
    assert noise.std() > 0.01 and err < 1e-6


def test_an_unsupported_class_is_refused_naming_the_supported(tmp_path):
    vae = diffusers.VQModel(in_channels=1, out_channels=1, block_out_channels=(32,), norm_num_groups=8)
    vae.save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match=r"'VQModel'; supported classes: \['UNet2DModel', 'DiTTransformer2DModel'"):
        import_diffusers(tmp_path / "vq", tmp_path / "run")


def test_missing_and_foreign_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        import_diffusers(tmp_path / "nothing", tmp_path / "run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a diffusers folder"):
        import_diffusers(tmp_path / "empty", tmp_path / "run")
    unet = tmp_path / "unet"
    random_unet().save_pretrained(unet)
    with pytest.raises(ValueError, match="no scheduler_config.json"):
        import_diffusers(unet, tmp_path / "run")
    with pytest.raises(ValueError, match="not a run written by `hirune import`"):
        load_imported(unet)
    assert json.loads((unet / "config.json").read_text())["_class_name"] == "UNet2DModel"


def test_the_import_command(tmp_path, capsys):
    from hirune.cli import main

    folder = save_pipeline(tmp_path / "pipeline", "v_prediction")
    assert main(["import", str(folder), "--out", str(tmp_path / "run")]) == 0
    assert "UNet2DModel, v prediction over 1000 steps" in capsys.readouterr().out
    assert load_imported(tmp_path / "run").denoiser.prediction == "v"
    assert main(["import", str(tmp_path / "nothing"), "--out", str(tmp_path / "run2")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["import", str(folder), "--out", str(tmp_path / "run")]) == 2  # exists, not empty
