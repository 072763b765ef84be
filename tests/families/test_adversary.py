"""The optional adversarial loss of LDM / VQGAN autoencoders: the discriminator losses on
hand-computed logits, the patch discriminator's shapes and batch independence, VQGAN's
adaptive weight (eq. 7) against autograd, and the trainer's two-optimizer loop: the GAN-free
run until disc_start, a discriminator step that cannot reach the autoencoder, exact
resume, checkpoints and clear errors.  Broken variants are injected to show each check
can fail."""

from __future__ import annotations

import json
import math

import pytest
import torch

import hirune.objectives.autoencoder as A
from hirune.objectives.autoencoder import adaptive_weight, autoencoder_loss, hinge_d_loss, vanilla_d_loss
from hirune.checkpoint import latest_checkpoint, load_checkpoint
from hirune.families import Batch
from hirune.models import PatchDiscriminator, build_model, model_config
from hirune.models.discriminator import patch_map_side, valid_layers
from hirune.training.loop import train
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer

REAL = torch.tensor([2.0, 0.5, -1.0, 0.0]).view(1, 1, 2, 2)   # a 2 x 2 map of patch logits
FAKE = torch.tensor([-2.0, 0.5, 1.0, -0.5]).view(1, 1, 2, 2)


def gan_config(tmp_path, name: str = "run", gan: dict | None = None, **kw):
    """A tiny KL autoencoder on the 8 x 8 digits with the GAN on from step 2."""
    small = {"size": "f2", "channels": 16, "z_channels": 4, "kl_weight": 1e-3,
             "disc_weight": 0.5, "disc_start": 2, "disc_channels": 8, **(gan or {})}
    values = dict(model_config=small, steps=4, batch_size=16, warmup=2, lr=3e-3, log_every=1, ckpt_every=2,
                  sample_every=0, out=str(tmp_path / name))
    values.update(kw)
    return preset_config("kl-ae-digits", values)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]


# --- the losses ------------------------------------------------------------------------------

def test_discriminator_losses_equal_hand_computed_values():
    # hinge: relu(1 - real) = [0, 0.5, 2, 1] (mean 0.875), relu(1 + fake) = [0, 1.5, 2, 0.5] (mean 1)
    assert hinge_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (0.875 + 1.0), rel=1e-7)
    # vanilla: -log sigmoid(real) and -log(1 - sigmoid(fake)), i.e. log(1 + e^-real) and log(1 + e^fake)
    real = sum(math.log1p(math.exp(-v)) for v in (2.0, 0.5, -1.0, 0.0)) / 4
    fake = sum(math.log1p(math.exp(v)) for v in (-2.0, 0.5, 1.0, -0.5)) / 4
    assert vanilla_d_loss(REAL, FAKE).item() == pytest.approx(0.5 * (real + fake), rel=1e-6)
    # equally the binary cross-entropy of real = 1, fake = 0
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    torch.testing.assert_close(vanilla_d_loss(REAL, FAKE),
                               0.5 * (bce(REAL, torch.ones_like(REAL)) + bce(FAKE, torch.zeros_like(FAKE))))
    # a confident, correct discriminator has zero hinge loss
    assert hinge_d_loss(torch.full((2, 1, 3, 3), 1.5), torch.full((2, 1, 3, 3), -1.0)).item() == 0.0


def test_adaptive_weight_is_the_ratio_of_gradient_norms_clamped():
    w = torch.ones(4, requires_grad=True)
    rec, gan = (3 * w).sum(), 0.5 * (w * w).sum()          # gradients 3 (norm 6) and w (norm 2)
    assert adaptive_weight(rec, gan, w).item() == pytest.approx(6 / (2 + 1e-4), rel=1e-6)
    assert adaptive_weight(rec, gan, w, disc_weight=0.5).item() == pytest.approx(3 / (2 + 1e-4), rel=1e-6)
    assert adaptive_weight(1e9 * w.sum(), gan, w).item() == 1e4      # clamped
    assert adaptive_weight(rec, 0 * w.sum(), w).item() == 1e4        # no GAN gradient: 6 / 1e-4, clamped


# --- the discriminator -----------------------------------------------------------------------

@pytest.mark.parametrize("side, n_layers, out", [(8, 1, 2), (28, 1, 12), (28, 2, 5), (28, 3, 1)])
def test_discriminator_gives_a_map_of_patch_logits(side, n_layers, out):
    d = PatchDiscriminator(1, 8, n_layers, image_size=side)
    assert d(torch.randn(3, 1, side, side)).shape == (3, 1, out, out) and patch_map_side(side, n_layers) == out
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2] * n_layers + [1, 1]
    assert [c.out_channels for c in convs] == [8 * min(2**n, 8) for n in range(n_layers + 1)] + [1]


def test_discriminator_is_batch_independent_and_initialised_like_pix2pix():
    """GroupNorm: an image's logits are the same alone, in any batch, in train or eval mode."""
    torch.manual_seed(0)
    d = PatchDiscriminator(1, 16, 2, image_size=28)
    x = torch.randn(6, 1, 28, 28)
    together = d(x)
    torch.testing.assert_close(d(x[2:3]), together[2:3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.eval()(x), together, rtol=0, atol=0)
    weights = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 0.002 and abs(weights.mean().item()) < 0.002
    scales = torch.cat([m.weight for m in d.modules() if isinstance(m, torch.nn.GroupNorm)])
    assert abs(scales.mean().item() - 1.0) < 0.01 and 0.01 < scales.std().item() < 0.03
    assert not list(d.buffers())                                        # no running statistics


def test_discriminator_depth_is_checked_against_the_image_size():
    assert valid_layers(8) == [1] and valid_layers(28) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"n_layers=2 leaves no patch logits on 8 x 8 images "
                                         r"\(sides 8 -> 4 -> 2 -> 1 -> 0\); valid n_layers for 8: \[1\]"):
        PatchDiscriminator(1, 8, 2, image_size=8)
    with pytest.raises(ValueError, match=r"valid n_layers for 28: \[1, 2, 3\]"):
        model_config("kl_autoencoder", size="f4", image_size=28, disc_weight=0.5, disc_layers=4)
    model_config("kl_autoencoder", size="f4", image_size=28, disc_layers=4)    # GAN off: not checked


# --- VQGAN's adaptive weight on a tiny autoencoder -------------------------------------------

def _tiny_autoencoder_and_discriminator():
    torch.manual_seed(0)
    model = build_model("kl_autoencoder", size="f2", in_channels=1, channels=16, z_channels=4, disc_weight=0.5,
                        perceptual_weight=0.5)
    disc = PatchDiscriminator(1, 8, 1, image_size=8)
    g = torch.Generator().manual_seed(1)
    return model, disc, torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 4, 4, 4, generator=g)


def check_adaptive_weight() -> None:
    """The loss's adaptive weight equals disc_weight ||grad L_rec|| / (||grad g_loss|| + 1e-4)
    at the decoder's output conv, computed here with autograd from scratch, and the loss's
    gradient treats it as a constant: grad loss = grad L_no_gan + lambda grad g_loss."""
    model, disc, x, noise = _tiny_autoencoder_and_discriminator()
    config = model.config
    loss = autoencoder_loss(model, x, config, noise=noise, dataset="digits", discriminator=disc,
                            last_layer=model.last_layer())
    # independently: L_rec = L1 + perceptual (taming's nll), g_loss = -mean D(x_hat)
    out = model(x, noise=noise)
    nll = (out.reconstruction - x).abs().flatten(1).mean(1) + 0.5 * A.perceptual_distance(x, out.reconstruction,
                                                                                        "digits")
    g_loss = -disc(out.reconstruction).mean()
    layer = model.decoder.out[2].weight
    grad_rec = torch.autograd.grad(nll.mean(), layer, retain_graph=True)[0]
    grad_gan = torch.autograd.grad(g_loss, layer, retain_graph=True)[0]
    expected = 0.5 * grad_rec.norm() / (grad_gan.norm() + 1e-4)
    assert loss.terms["adaptive_weight"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.terms["g_loss"].item() == pytest.approx(g_loss.item(), rel=1e-6)
    # the gradient of the loss: lambda is a constant, and the discriminator gets nothing
    no_gan = autoencoder_loss(model, x, config, noise=noise, dataset="digits").loss
    params = list(model.parameters())
    want = torch.autograd.grad(no_gan + expected.item() * g_loss, params)
    got = torch.autograd.grad(loss.loss, params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    loss = autoencoder_loss(model, x, config, noise=noise, dataset="digits", discriminator=disc,
                            last_layer=model.last_layer())
    loss.loss.backward()
    assert all(p.grad is None and p.requires_grad for p in disc.parameters())


def test_adaptive_weight_matches_autograd():
    check_adaptive_weight()


def test_adaptive_weight_check_catches_the_wrong_layer(monkeypatch):
    """An autoencoder that exposes its decoder's first conv as G_L."""
    from hirune.models.autoencoder import KLAutoencoder

    monkeypatch.setattr(KLAutoencoder, "last_layer", lambda self: self.decoder.conv_in.weight)
    with pytest.raises(AssertionError):
        check_adaptive_weight()


def test_adaptive_weight_check_catches_an_undetached_weight(monkeypatch):
    """The same value, but differentiable: the loss's gradient then carries d lambda / d theta."""
    def undetached(rec, gan, last_layer, disc_weight=1.0, average=None):
        grad_rec, = torch.autograd.grad(rec, last_layer, retain_graph=True, create_graph=True)
        grad_gan, = torch.autograd.grad(gan, last_layer, retain_graph=True, create_graph=True)
        return disc_weight * (grad_rec.norm() / (grad_gan.norm() + 1e-4)).clamp(0.0, 1e4)

    monkeypatch.setattr(A, "adaptive_weight", undetached)
    with pytest.raises(AssertionError):
        check_adaptive_weight()


# --- the trainer ---------------------------------------------------------------------------

def _gan_free_until_disc_start(tmp_path) -> None:
    """Steps 1-2 (before disc_start = 2) equal the GAN-free run bitwise (losses, weights,
    EMA); from step 3 the loss is L_no_gan + lambda g_loss and the discriminator moves."""
    off = train(gan_config(tmp_path, "off", gan={"disc_weight": 0.0}), progress=False)
    on = train(gan_config(tmp_path, "on"), progress=False)
    rec_off, rec_on = records(off.cfg.out), records(on.cfg.out)
    assert [r["loss"] for r in rec_off[:2]] == [r["loss"] for r in rec_on[:2]]
    a, _ = load_checkpoint(latest_checkpoint(off.cfg.out).parent / "step_00000002")
    b, _ = load_checkpoint(latest_checkpoint(on.cfg.out).parent / "step_00000002")
    for part in ("model", "ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(on.cfg.seed + 2)
        init = PatchDiscriminator(1, 8, 1, image_size=8)
    for k, v in init.state_dict().items():
        assert torch.equal(b["discriminator"][k], v), k                # untouched before disc_start
        if k.endswith("weight"):  # (the output bias has zero hinge gradient while all |logits| < 1)
            assert not torch.equal(on.family.adversary.discriminator.state_dict()[k], v), k  # trained after it
    assert "g_loss" not in rec_on[1] and {"g_loss", "d_loss", "adaptive_weight", "logits_real",
                                          "logits_fake"} <= set(rec_on[2])
    for r in rec_on[2:]:  # one process, one micro-batch: the logged loss is the sum of its terms
        no_gan = r["reconstruction"] + 1e-3 * r["kl"] / 64
        assert r["loss"] == pytest.approx(no_gan + r["adaptive_weight"] * r["g_loss"], rel=1e-5)
        assert abs(r["adaptive_weight"] * r["g_loss"]) > 1e-6
    assert rec_on[2]["loss"] != rec_off[2]["loss"]


def test_before_disc_start_the_run_is_the_gan_free_run(tmp_path):
    _gan_free_until_disc_start(tmp_path)


def test_gan_free_check_catches_a_gan_that_ignores_disc_start(tmp_path, monkeypatch):
    from hirune.families.adversary import Adversary

    monkeypatch.setattr(Adversary, "active", lambda self, step: True)
    with pytest.raises(AssertionError):
        _gan_free_until_disc_start(tmp_path)


def _one_batch(trainer):
    data, _ = trainer.training_data()
    draw = trainer.family.draw(8, trainer.noise_rng)
    assert draw.noise is not None       # a KL autoencoder's posterior noise
    return Batch(data[:8], None, torch.arange(8)), draw


def test_discriminator_step_does_not_reach_the_autoencoder(tmp_path, monkeypatch):
    """With the generator's graph still alive, the discriminator's step leaves every
    autoencoder gradient empty and fills every discriminator gradient; the variant that
    forgets to detach the reconstructions fills the autoencoder's gradients."""
    def grads_after_discriminator_step():
        trainer = Trainer(gan_config(tmp_path, gan={"disc_start": 0}), distributed=False)
        batch, d = _one_batch(trainer)
        adversary = trainer.family.active_adversary(trainer.step)
        assert adversary is trainer.family.adversary is not None
        out = trainer.family.loss(trainer.forward, batch, d, trainer.step)   # the generator's loss, graph kept
        assert "g_loss" in out.terms
        adversary.step([(batch.x, out.reconstruction)])
        return [p.grad for p in trainer.model.parameters()], [p.grad for p in adversary.discriminator.parameters()]

    model_grads, disc_grads = grads_after_discriminator_step()
    assert all(g is None for g in model_grads) and all(g is not None for g in disc_grads)
    assert sum(g.abs().sum() for g in disc_grads) > 0
    def undetached(D, x, fake, kind):  # the broken variant: no detach
        logits = D(torch.cat([x, fake])).float()
        lr, lf = logits.chunk(2)
        return A.D_LOSSES[kind](lr, lf), lr.mean().detach(), lf.mean().detach()

    monkeypatch.setattr(A, "discriminator_loss", undetached)
    model_grads, _ = grads_after_discriminator_step()
    assert any(g is not None for g in model_grads)
    # inside train_step the generator's backward has freed that graph: the variant fails loudly
    trainer = Trainer(gan_config(tmp_path, gan={"disc_start": 0}), distributed=False)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        trainer.train_step(*trainer.training_data())


def test_the_discriminator_step_leaves_the_generator_update_unchanged(tmp_path, monkeypatch):
    """One optimizer step with and without the discriminator's step: bitwise the same
    autoencoder weights (its gradients are those of the generator's loss alone)."""
    def step(skip_discriminator: bool):
        trainer = Trainer(gan_config(tmp_path, gan={"disc_start": 0}, grad_accum=2), distributed=False)
        if skip_discriminator:
            zero = torch.zeros(())
            trainer.family.adversary.step = lambda pairs: (zero, zero)
        trainer.train_step(*trainer.training_data())
        return trainer

    a, b = step(False), step(True)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert any(not torch.equal(v, w) for v, w in zip(a.family.adversary.discriminator.state_dict().values(),
                                                      b.family.adversary.discriminator.state_dict().values()))


def _resume(tmp_path, corrupt=None):
    cfg = dict(steps=6, ckpt_every=3, grad_accum=2, gan={"disc_start": 2})
    straight = train(gan_config(tmp_path / "a", **cfg), progress=False)
    train(gan_config(tmp_path / "b", **cfg), stop_after=3, progress=False)
    if corrupt:
        corrupt(latest_checkpoint(tmp_path / "b" / "run"))
    resumed = train(gan_config(tmp_path / "b", resume=True, **cfg), progress=False)
    assert [r["loss"] for r in records(straight.cfg.out)] == [r["loss"] for r in records(resumed.cfg.out)]
    for name, ours, theirs in (("model", straight.model.state_dict(), resumed.model.state_dict()),
                               ("discriminator", straight.family.adversary.discriminator.state_dict(),
                                resumed.family.adversary.discriminator.state_dict())):
        for k, v in ours.items():
            assert torch.equal(v, theirs[k]), (name, k)
    for k in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]), k
    a = straight.family.adversary.optimizer.state_dict()["state"]
    b = resumed.family.adversary.optimizer.state_dict()["state"]
    for pid, entries in a.items():
        for key, v in entries.items():
            assert torch.equal(v, b[pid][key]), (pid, key)


def test_resume_with_the_gan_is_exact(tmp_path):
    _resume(tmp_path)


def test_resume_check_catches_a_lost_discriminator_optimizer(tmp_path):
    """Resuming with the discriminator's AdamW state zeroed diverges, and the check sees it."""
    from safetensors.torch import save_file

    from hirune.checkpoint import _sha256

    def zero_disc_optimizer(ckpt):
        tensors, state = load_checkpoint(ckpt)
        file = ckpt / "disc_optimizer.safetensors"
        save_file({k: torch.zeros_like(v) for k, v in tensors["disc_optimizer"].items()}, str(file))
        state["files"]["disc_optimizer.safetensors"] = _sha256(file)
        (ckpt / "state.json").write_text(json.dumps(state))
        (ckpt / "state.sha256").write_text(_sha256(ckpt / "state.json"))  # a forgery every check accepts

    with pytest.raises(AssertionError):
        _resume(tmp_path, zero_disc_optimizer)


def test_checkpoint_holds_the_discriminator_and_load_export_leave_it_out(tmp_path, capsys):
    from hirune.cli import main
    from hirune.evaluation.reconstruction import reconstruction_report
    from hirune.families.latent import FirstStage
    from hirune.training.export import export_weights, read_weights
    from hirune.training.loading import load

    run = train(gan_config(tmp_path), progress=False)
    adversary = run.family.adversary
    tensors, state = load_checkpoint(run.cfg.out)
    for k, v in adversary.discriminator.state_dict().items():
        assert torch.equal(tensors["discriminator"][k], v), k
    optim = adversary.optimizer.state_dict()
    assert len(optim["state"]) == len(list(adversary.discriminator.parameters()))
    for pid, entries in optim["state"].items():
        assert torch.equal(tensors["disc_optimizer"][f"{pid}.exp_avg_sq"], entries["exp_avg_sq"])
    assert state["disc_optimizer"]["param_groups"][0]["betas"] == [0.5, 0.9]
    loaded = load(run.cfg.out)
    assert loaded.adversary is None                                    # inference: no discriminator
    x = run.family.train_data.data[:16]
    run.model.eval()
    with torch.no_grad(), run.ema.applied(run.model):
        expected = run.model(x, sample=False).reconstruction
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, sample=False).reconstruction, expected, rtol=0, atol=0)
    assert reconstruction_report(loaded.model, loaded.data.name, 64, loaded.latent_stats)["psnr_db"] > 0
    weights, _ = read_weights(export_weights(run.cfg.out))
    assert set(weights) == set(run.model.state_dict())                 # the discriminator stays behind
    assert FirstStage(load(run.cfg.out)).moments(x).shape == (16, 8, 4, 4)   # usable as a first stage
    capsys.readouterr()
    assert main(["eval", run.cfg.out, "--n", "64"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["psnr_db"] > 0


@pytest.mark.parametrize("fields, error, match", [
    ({"model_config": {"size": "f2", "disc_weight": 0.5, "disc_loss": "wgan"}}, ValueError,
     r"disc_loss='wgan'; valid: \['hinge', 'vanilla'\]"),
    ({"model_config": {"size": "f2", "disc_weight": -0.5}}, ValueError, r"disc_weight and disc_start must be >= 0"),
    ({"model_config": {"size": "f2", "disc_weight": 0.5, "disc_start": -1}}, ValueError, r"disc_start must be >= 0"),
    ({"model_config": {"size": "f2", "disc_weight": 0.5, "disc_channels": 0}}, ValueError,
     r"disc_channels and disc_layers must be >= 1"),
    ({"model_config": {"size": "f2", "disc_weight": 0.5, "disc_layers": 2}}, ValueError,
     r"valid n_layers for 8: \[1\]"),
    ({"model_config": {"size": "f2", "disc_weight": "0.5"}}, ValueError, r"disc_weight must be float, got .0.5. \(str\)"),
    ({"strategy": "zero3"}, ValueError, r"needs strategy in \['ddp', 'zero1'\], not 'zero3'"),
    ({"precision": "fp16"}, ValueError, r"does not support precision='fp16'"),
])
def test_bad_gan_configs_are_refused(tmp_path, fields, error, match):
    with pytest.raises(error, match=match):
        Trainer(gan_config(tmp_path, **fields), distributed=False)
