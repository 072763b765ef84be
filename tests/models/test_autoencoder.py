"""Autoencoders for latent diffusion: the diagonal Gaussian posterior, the vector
quantiser (nearest code, straight-through gradient, VQ losses, EMA codebook, perplexity),
shapes and factors, the architecture against diffusers' AutoencoderKL, the loss, the
latent scale factor, and short training runs through `hirune.training`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hirune.objectives.autoencoder import (autoencoder_loss, latent_statistics, originals_over_reconstructions,
                                 perceptual_distance)
from hirune.models import build_model, model_config
from hirune.models.autoencoder import DiagonalGaussian
from hirune.models.quantize import VectorQuantizer, perplexity


# --- the diagonal Gaussian posterior ------------------------------------------------------

def test_kl_equals_closed_form_torch_distributions_and_monte_carlo():
    g = torch.Generator().manual_seed(1)
    mean = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    q = DiagonalGaussian(mean, logvar)
    # closed form, element by element: log(1 / s) + (s^2 + m^2) / 2 - 1/2
    by_hand = (-0.5 * logvar + 0.5 * (logvar.exp() + mean**2) - 0.5).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), by_hand, rtol=1e-12, atol=1e-12)
    N = torch.distributions.Normal
    reference = torch.distributions.kl_divergence(N(mean, (0.5 * logvar).exp()), N(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), reference, rtol=1e-12, atol=1e-12)
    # Monte Carlo: E_q[log q(z) - log p(z)] over 20 000 draws, within 5 standard errors
    z = q.sample(noise=torch.randn(20000, *mean.shape, generator=g, dtype=torch.float64))  # (S, B, ...)
    log_ratio = (N(mean, q.std).log_prob(z) - N(0.0, 1.0).log_prob(z)).flatten(2).sum(2)  # (S, B)
    err = log_ratio.std(0) / math.sqrt(len(z))
    assert ((log_ratio.mean(0) - q.kl()).abs() < 5 * err).all(), (log_ratio.mean(0), q.kl())


def test_posterior_sample_has_the_posterior_mean_and_variance():
    mean = torch.tensor([[[[1.5]], [[-2.0]]]], dtype=torch.float64).expand(40000, 2, 1, 1)
    logvar = torch.tensor([[[[0.0]], [[math.log(0.25)]]]], dtype=torch.float64).expand(40000, 2, 1, 1)
    z = DiagonalGaussian(mean, logvar).sample(generator=torch.Generator().manual_seed(0))
    # standard errors: 1/200 and 0.5/200 for the means, ~0.007 sqrt(2) * var for the variances
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.tensor([1.5, -2.0], dtype=torch.float64), atol=0.03, rtol=0)
    torch.testing.assert_close(z.var((0, 2, 3)), torch.tensor([1.0, 0.25], dtype=torch.float64), atol=0.03, rtol=0)
    assert torch.equal(DiagonalGaussian(mean, logvar).mode(), mean)


def test_logvar_is_clamped_like_ldm():
    q = DiagonalGaussian(torch.zeros(1, 1, 1, 2), torch.tensor([[[[-100.0, 100.0]]]]))
    assert q.logvar.flatten().tolist() == [-30.0, 20.0]


# --- the vector quantiser -----------------------------------------------------------------

def test_quantizer_returns_the_nearest_code():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3)
    with torch.no_grad():
        vq.embedding.normal_()
    z = torch.randn(4, 3, 5, 5)
    out = vq(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    brute = torch.cdist(flat.double(), vq.embedding.double()).argmin(1)
    assert torch.equal(out.indices.flatten(), brute)
    torch.testing.assert_close(out.z_q, vq.embedding[brute].view(4, 5, 5, 3).permute(0, 3, 1, 2))


def test_straight_through_gradient_reaches_the_encoder():
    """d loss / d z_e equals d loss / d z_q for any loss of the decoder side."""
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2)
    z_e = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = vq(z_e)
    out.z_q.retain_grad()
    w = torch.randn_like(z_e)
    ((out.z_q * w).sum() + out.z_q.pow(2).sum()).backward()
    assert out.z_q.grad is not None
    torch.testing.assert_close(z_e.grad, out.z_q.grad)
    torch.testing.assert_close(z_e.grad, w + 2 * out.z_q.detach())   # evaluated at the code
    assert vq.embedding.grad is None                                   # the decoder does not move the codes


def test_codebook_loss_moves_only_the_codebook_and_commitment_only_the_encoder():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2)
    z_e = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = vq(z_e)
    e_k = vq.lookup(out.indices).detach()
    n = z_e[0].numel()                                                  # the per-example mean's count
    grad_z, grad_e = torch.autograd.grad(out.codebook_loss.sum(), (z_e, vq.embedding), allow_unused=True)
    assert grad_z is None or torch.count_nonzero(grad_z) == 0
    expected_e = torch.zeros_like(vq.embedding).index_add_(
        0, out.indices.flatten(), (2 * (e_k - z_e.detach()) / n).permute(0, 2, 3, 1).reshape(-1, 2))
    torch.testing.assert_close(grad_e, expected_e)
    out = vq(z_e)
    grad_z, grad_e = torch.autograd.grad(out.commitment_loss.sum(), (z_e, vq.embedding), allow_unused=True)
    assert grad_e is None or torch.count_nonzero(grad_e) == 0
    torch.testing.assert_close(grad_z, 2 * (z_e.detach() - e_k) / n)


def test_ema_update_moves_codes_toward_the_mean_of_their_vectors():
    """One training forward, by hand: N_k = g + (1 - g) n_k, m_k = g e_k + (1 - g) sum_k,
    e_k = m_k / N~_k with Laplace smoothing; codes nobody picked stay where they were."""
    g, eps = 0.9, 1e-5
    vq = VectorQuantizer(4, 2, update="ema", decay=g, eps=eps, init="uniform")
    codes = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [-50.0, -50.0]])
    with torch.no_grad():
        vq.embedding.copy_(codes)
        vq.embed_sum.copy_(codes)
    vectors = torch.tensor([[1.0, 1.0], [0.0, 2.0], [9.0, 1.0], [11.0, 3.0], [12.0, -1.0], [1.0, 11.0]])
    z = vectors.T.reshape(1, 2, 1, 6)                                  # six positions in one row
    vq.train()
    out = vq(z)
    assert out.indices.flatten().tolist() == [0, 0, 1, 1, 1, 2]
    counts = torch.tensor([2.0, 3.0, 1.0, 0.0])
    sums = torch.stack([vectors[:2].sum(0), vectors[2:5].sum(0), vectors[5], torch.zeros(2)])
    N = g * 1.0 + (1 - g) * counts
    m = g * codes + (1 - g) * sums
    smoothed = (N + eps) / (N.sum() + 4 * eps) * N.sum()
    torch.testing.assert_close(vq.embedding.detach(), m / smoothed[:, None])
    torch.testing.assert_close(vq.cluster_size, N)
    # each used code moved toward the mean of its vectors; the unused one barely moved
    means = sums[:3] / counts[:3, None]
    for k in range(3):
        assert (vq.embedding[k] - means[k]).norm() < (codes[k] - means[k]).norm()
    torch.testing.assert_close(vq.embedding[3], codes[3], rtol=1e-4, atol=0)
    assert out.codebook_loss.abs().sum() == 0 and vq.embedding.grad is None
    vq.eval()
    before = vq.embedding.clone()
    vq(z)
    assert torch.equal(vq.embedding, before)                            # no update outside training


def test_kmeans_init_puts_the_codes_on_the_first_batch_once():
    """Two tight clusters and four codes: the first training forward moves every code
    onto the data (k-means of the batch), a later batch does not re-initialise."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 3.0]])
    flat = torch.cat([c + 0.1 * torch.randn(50, 2, generator=g) for c in centres])
    z = flat.T.reshape(1, 2, 10, 10)
    for update in ("loss", "ema"):
        vq = VectorQuantizer(4, 2, update=update).train()
        assert not vq.initialized
        out = vq(z)
        assert vq.initialized and out.usage == 1.0                      # every code won some vectors
        nearest_centre = torch.cdist(vq.embedding.detach(), centres).min(1).values
        assert (nearest_centre < 0.5).all(), vq.embedding              # and sits inside a cluster
        assert set(out.indices.flatten()[:50].tolist()).isdisjoint(out.indices.flatten()[50:].tolist())
        before = vq.embedding.detach().clone()
        vq(z + 100.0)
        if update == "loss":
            assert torch.equal(vq.embedding, before)                     # initialised once only
    uniform = VectorQuantizer(4, 2, init="uniform").train()
    assert uniform(z).usage < 1.0                                       # the collapse it prevents


def test_perplexity_of_uniform_and_collapsed_assignments():
    assert perplexity(torch.arange(64) % 16, 16).item() == pytest.approx(16.0, rel=1e-12)
    assert perplexity(torch.zeros(64, dtype=torch.long), 16).item() == pytest.approx(1.0)
    assert perplexity(torch.tensor([0, 0, 1, 1]), 16).item() == pytest.approx(2.0)


def test_vq_token_protocol_encodes_to_code_indices_and_decodes_them_back():
    """The image-token protocol (`num_codes`, `encode_codes`, `decode_codes`) that DALL-E's
    transformer reads: the indices are the quantiser's, and decoding them is decoding z_q."""
    torch.manual_seed(0)
    vq = build_model("vq_autoencoder", size="f2", in_channels=1, codebook_size=16, codebook_init="uniform").eval()
    with torch.no_grad():
        vq.quantizer.embedding.normal_()
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        codes = vq.encode_codes(x)
        assert vq.num_codes == 16 and codes.shape == (3, 4, 4) and codes.dtype == torch.int64
        assert torch.equal(codes, vq.quantize(x).indices)
        torch.testing.assert_close(vq.decode_codes(codes), vq.decode(vq.encode(x)))
    with pytest.raises(ValueError, match="0..15"):
        vq.decode_codes(torch.full((1, 4, 4), 16))
    with pytest.raises(ValueError, match="integer"):
        vq.decode_codes(torch.zeros(1, 4, 4))


# --- shapes, factors, configs -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["kl_autoencoder", "vq_autoencoder"])
@pytest.mark.parametrize("size, side, latent_side", [("f2", 8, 4), ("f4", 28, 7), ("f4", 8, 2)])
def test_shapes_and_downsample_factor(kind, size, side, latent_side):
    model = build_model(kind, size=size, in_channels=1, channels=16, z_channels=3)
    assert model.config.downsample_factor == side // latent_side
    x = torch.randn(2, 1, side, side)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.latent.shape == (2, 3, latent_side, latent_side) == (2, *model.latent_shape(x.shape[1:]))
    latent = model.encode(x)
    z = latent.sample() if kind == "kl_autoencoder" else latent
    assert z.shape == out.latent.shape and model.decode(z).shape == x.shape


def test_non_divisible_size_names_both_and_the_valid_factors():
    message = r"image size 28 is not divisible by .* f=8 .* valid factors for 28: \[1, 2, 4\]"
    with pytest.raises(ValueError, match=message):
        build_model("kl_autoencoder", size="f8", in_channels=1, image_size=28)
    model = build_model("vq_autoencoder", size="f4", in_channels=1, channels=16)
    with pytest.raises(ValueError, match=r"image size 10 is not divisible by .* f=4 .* valid factors for 10: \[1, 2\]"):
        model.encode(torch.randn(1, 1, 10, 12))


@pytest.mark.parametrize("kind, config, match", [
    ("kl_autoencoder", {"size": "f16"}, r"unknown kl_autoencoder size 'f16'; valid: \['f2', 'f4', 'f8'\]"),
    ("kl_autoencoder", {"codebook_size": 8}, r"unknown KLAutoencoderConfig keys \['codebook_size'\]"),
    ("vq_autoencoder", {"codebook_update": "kmeans"}, r"codebook_update='kmeans'; valid: \['loss', 'ema'\]"),
    ("kl_autoencoder", {"reconstruction": "l3"}, r"reconstruction='l3'; valid: \['l1', 'l2'\]"),
    ("kl_autoencoder", {"kl_weight": -1.0}, r"kl_weight must be >= 0"),
])
def test_bad_configs_are_refused(kind, config, match):
    with pytest.raises(ValueError, match=match):
        model_config(kind, config)


def test_kl_f8_is_stable_diffusions_vae_layer_for_layer():
    """With hirune's weights copied in, diffusers' AutoencoderKL (the SD VAE's class, at a
    small width) gives the same posterior and decoding to 1e-10 in float64."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ours = build_model("kl_autoencoder", in_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=1,
                       z_channels=4).double().eval()
    theirs = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                     up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64),
                                     layers_per_block=1, latent_channels=4).double().eval()
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
    for p in ours.parameters():  # the attention output starts at zero here; make it matter
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    theirs.load_state_dict(diffusers_names(ours.state_dict(), levels=2, num_res_blocks=1))
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    q = ours.encode(x)
    dist = theirs.encode(x).latent_dist
    torch.testing.assert_close(q.mean, dist.mean, rtol=0, atol=1e-10)
    torch.testing.assert_close(q.logvar, dist.logvar, rtol=0, atol=1e-10)
    torch.testing.assert_close(ours.decode(q.mean), theirs.decode(dist.mean).sample, rtol=0, atol=1e-10)


def diffusers_names(sd: dict, levels: int, num_res_blocks: int) -> dict:
    """hirune KLAutoencoder state dict -> diffusers AutoencoderKL names (`hirune.training.diffusers_names`)."""
    from hirune.training.diffusers_names import autoencoder_to_diffusers

    return autoencoder_to_diffusers(sd, num_res_blocks)


# --- the loss -------------------------------------------------------------------------------

def test_kl_loss_is_ldm_weighting_per_pixel():
    torch.manual_seed(0)
    model = build_model("kl_autoencoder", size="f2", in_channels=1, channels=16, kl_weight=0.01,
                        reconstruction="l2")
    x, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 4, 4, 4)
    loss = autoencoder_loss(model, x, model.config, noise=noise)
    out = model(x, noise=noise)
    rec = (out.reconstruction - x).pow(2).flatten(1).mean(1)
    by_hand = (rec + 0.01 * out.posterior.kl() / 64).mean()
    torch.testing.assert_close(loss.loss, by_hand)
    assert loss.terms["kl"] == pytest.approx(float(out.posterior.kl().mean().detach()), rel=1e-6)


def test_vq_loss_adds_codebook_and_beta_commitment():
    torch.manual_seed(0)
    model = build_model("vq_autoencoder", size="f2", in_channels=1, channels=16, codebook_size=8, beta=0.5)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    loss = autoencoder_loss(model, x, model.config)
    q = model.quantize(x)
    rec = (model.decode(q.z_q) - x).abs().flatten(1).mean(1)
    torch.testing.assert_close(loss.loss, (rec + q.codebook_loss + 0.5 * q.commitment_loss).mean())
    assert {"perplexity", "usage", "codebook", "commitment"} <= set(loss.terms)


def test_perceptual_distance_uses_the_frozen_evaluator():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_()
    assert perceptual_distance(x, x, "digits").abs().max() < 1e-6
    d = perceptual_distance(x, y, "digits")
    assert (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    model = build_model("kl_autoencoder", size="f2", in_channels=1, channels=16, perceptual_weight=1.0)
    loss = autoencoder_loss(model, x, model.config, dataset="digits")
    assert loss.terms["perceptual"] > 0
    assert not any("evaluator" in n for n, _ in model.named_parameters())


# --- the latent scale factor -----------------------------------------------------------------

def test_scale_factor_gives_unit_std_on_the_sampled_latents():
    torch.manual_seed(0)
    model = build_model("kl_autoencoder", size="f2", in_channels=1, channels=16)
    with torch.no_grad():
        model.quant_conv.bias[4:].fill_(1.0)  # log-variance 1 + ...: samples spread beyond the means
    images = torch.rand(300, 1, 8, 8) * 2 - 1
    stats = latent_statistics(model, images, num_images=200, seed=3)
    assert stats["num_images"] == 200 and stats["latent_shape"] == [4, 4, 4]
    # the same posterior samples that the statistics saw: seeded subset, seeded noise
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(3))[:200]
    with torch.no_grad():
        z = model.encode(images[idx]).sample(generator=torch.Generator().manual_seed(3)).double()
        means = model.encode(images[idx]).mean.double()
    assert (z * stats["scale_factor"]).std().item() == pytest.approx(1.0, rel=1e-6)
    assert z.std() > 1.5 * means.std()      # the scale is of samples (LDM), not of the posterior means
    torch.testing.assert_close(torch.tensor(stats["channel_std"], dtype=torch.float64), z.std((0, 2, 3)))
    vq = build_model("vq_autoencoder", size="f2", in_channels=1, channels=16, codebook_size=8,
                     codebook_update="ema")
    vq.train()
    before = vq.quantizer.embedding.clone()
    stats = latent_statistics(vq, images)
    assert torch.equal(vq.quantizer.embedding, before) and vq.training    # no codebook update, mode restored
    with torch.no_grad():
        assert (vq.eval().encode(images) * stats["scale_factor"]).std().item() == pytest.approx(1.0, rel=1e-5)


def test_reconstruction_grid_puts_originals_over_reconstructions():
    x, y = torch.zeros(16, 1, 2, 2), torch.ones(16, 1, 2, 2)
    grid = originals_over_reconstructions(x, y)
    assert grid[:8].eq(0).all() and grid[8:16].eq(1).all() and grid[16:24].eq(0).all()


# --- training through hirune.training ------------------------------------------------------

def ae_config(tmp_path, kind: str, name: str, **kw):
    from hirune.training.presets import preset_config

    preset = "kl-ae-digits" if kind == "kl_autoencoder" else "vq-ae-digits"
    small = {"size": "f2", "channels": 16, "z_channels": 4}
    small.update({"codebook_size": 64, "codebook_update": "ema"} if kind == "vq_autoencoder" else {})
    values = dict(model_config=small, steps=80, batch_size=32, warmup=5, lr=3e-3, log_every=10,
                  ckpt_every=80, sample_every=80, num_samples=16, out=str(tmp_path / name))
    values.update(kw)
    return preset_config(preset, values)


@pytest.mark.parametrize("model", ["kl_autoencoder", pytest.param("vq_autoencoder", marks=pytest.mark.slow)])
def test_training_improves_psnr_and_reload_gives_the_same_reconstructions(tmp_path, model, capsys):
    """80 steps (about 2 s): PSNR on the test digits rises from about 7 dB to about 16 dB,
    above the 11.4 dB of the best constant image (the mean training digit), so the
    decoder uses the latent."""
    from hirune.cli import main
    from hirune.data import load_dataset
    from hirune.evaluation.reconstruction import reconstruction_report
    from hirune.metrics import psnr
    from hirune.training.loading import load
    from hirune.training.loop import train
    from hirune.training.trainer import Trainer

    cfg = ae_config(tmp_path, model, "run")
    fresh = Trainer(cfg)
    untrained = reconstruction_report(fresh.model, fresh.family.data.name, 200, fresh.family.latent_stats)
    run = train(cfg, progress=False)
    assert run.family.name == "autoencoder" and getattr(run.family, "denoiser", None) is None
    loaded = load(cfg.out)
    trained = reconstruction_report(loaded.model, loaded.data.name, 200, loaded.latent_stats)
    evaluated = loaded.evaluate(200)
    assert evaluated["psnr_db"] == trained["psnr_db"] and evaluated["step"] == 80
    test = load_dataset("digits", "test").data[:200]
    train_images = run.family.train_data.data
    mean_image = float(psnr(train_images.mean(0, keepdim=True).expand_as(test), test).mean())
    assert trained["psnr_db"] > max(untrained["psnr_db"] + 3, mean_image + 2), (untrained, trained, mean_image)
    assert trained["latent_shape"] == [4, 4, 4]
    x = train_images[:32]
    run.model.eval()
    with torch.no_grad(), run.ema.applied(run.model):
        expected = run.model(x, sample=False).reconstruction
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, sample=False).reconstruction, expected, rtol=0, atol=0)
    assert loaded.latent_stats == run.family.latent_stats and loaded.latent_stats["scale_factor"] > 0
    assert (tmp_path / "run" / "samples" / "step_00000080.png").stat().st_size > 0
    record = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert "reconstruction" in record and ("perplexity" in record) == (model == "vq_autoencoder")
    capsys.readouterr()
    assert main(["eval", cfg.out, "--n", "100"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["psnr_db"] > 0 and metrics["scale_factor"] == loaded.latent_stats["scale_factor"]
    assert ("codebook_perplexity" in metrics) == (model == "vq_autoencoder")
    assert main(["sample", cfg.out, "--out", str(tmp_path / "s.png")]) == 2


def test_vq_ema_codebook_resumes_exactly(tmp_path):
    from hirune.training.loop import train

    straight = train(ae_config(tmp_path / "a", "vq_autoencoder", "run", steps=6, ckpt_every=3, sample_every=0),
                     progress=False)
    train(ae_config(tmp_path / "b", "vq_autoencoder", "run", steps=6, ckpt_every=3, sample_every=0),
          stop_after=3, progress=False)
    resumed = train(ae_config(tmp_path / "b", "vq_autoencoder", "run", steps=6, ckpt_every=3, sample_every=0,
                              resume=True), progress=False)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(straight.model.quantizer.cluster_size, torch.ones(64))  # the codebook did move


@pytest.mark.parametrize("fields, match", [
    ({"model": "unet"}, r"family 'autoencoder' trains model in \['kl_autoencoder', 'vq_autoencoder', 'dvae', "
                        r"'video_kl'\], not 'unet'"),
    # the autoencoder family has no settings of its own: no diffusion objective, no conditioning
    ({"objective": "regression"}, r"unknown config key\(s\) \['objective'\] for family 'autoencoder'"),
    ({"class_conditional": True}, r"unknown config key\(s\) \['class_conditional'\] for family 'autoencoder'"),
    ({"dataset": "two_moons"}, r"an autoencoder needs images; two_moons holds toy data"),
])
def test_trainer_refuses_mismatched_autoencoder_configs(tmp_path, fields, match):
    from hirune.training.trainer import Trainer

    with pytest.raises(ValueError, match=match):
        Trainer(ae_config(tmp_path, "kl_autoencoder", "run", **fields))
