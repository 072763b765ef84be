"""`hirune import` of an AutoencoderKL folder: an autoencoder run (family autoencoder, model
kl_autoencoder) whose encode / decode are diffusers' to 1e-5 and whose scaling_factor is its
latent scale, and which a latent diffusion run names as its first stage (autoencoder=RUN)."""

from __future__ import annotations

import pytest
import torch

from optional import lazy, needs
from hirune.cli import main
from hirune.training import TrainConfig, load, train

diffusers = lazy("diffusers")
# numpy 2 notes from diffusers
pytestmark = [needs("diffusers"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A random AutoencoderKL (widths 32, 64: hirune's GroupNorm counts) on 1 x 8 x 8 images,
    every weight perturbed, imported on the digits."""
    tmp = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
                                  layers_per_block=1, norm_num_groups=32, latent_channels=2, sample_size=8,
                                  scaling_factor=0.5)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.02 * torch.randn_like(p))
    vae.save_pretrained(tmp / "vae")
    assert main(["import", str(tmp / "vae"), "--out", str(tmp / "run"), "--dataset", "digits"]) == 0
    return vae.eval(), tmp / "run"


def test_the_imported_autoencoder_encodes_and_decodes_as_diffusers(vae_run):
    vae, run_dir = vae_run
    run = load(run_dir)
    assert (run.name, run.cfg.model, run.data.name) == ("autoencoder", "kl_autoencoder", "digits")
    assert run.latent_stats["scale_factor"] == 0.5
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        q, dist = run.model.encode(x), vae.encode(x).latent_dist
        decoded, theirs = run.model.decode(q.mean), vae.decode(dist.mean).sample
    errs = [(q.mean - dist.mean).abs().max().item(), (q.logvar - dist.logvar).abs().max().item(),
            (decoded - theirs).abs().max().item()]
    print(f"imported AutoencoderKL: max |hirune - diffusers| mean, logvar, decode = {errs}")
    assert decoded.abs().mean() > 0.01 and q.mean.abs().mean() > 0.01
    assert max(errs) < 1e-5


def test_a_latent_diffusion_run_takes_the_imported_autoencoder_as_first_stage(vae_run, tmp_path):
    vae, run_dir = vae_run
    cfg = TrainConfig.from_dict(dict(dataset="digits", steps=2, batch_size=16, lr=1e-3, warmup=1, log_every=1,
                                     ckpt_every=2, sample_every=0, model="dit",
                                     model_config={"size": "T/2", "depth": 2}, autoencoder=str(run_dir),
                                     out=str(tmp_path / "ldm")))
    train(cfg, progress=False)
    ldm = load(tmp_path / "ldm")
    assert ldm.first_stage.scale == 0.5 and ldm.sample_shape == (2, 4, 4)
    z = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        err = (ldm.first_stage.model.decode(z) - vae.decode(z).sample).abs().max().item()
    assert err < 1e-5
    assert main(["sample", str(tmp_path / "ldm"), "--n", "2", "--steps", "2", "--out", str(tmp_path / "s.npz")]) == 0
