"""unCLIP's decoder (`families/embedding.py`): a diffusion run conditioned on the CLIP image
embedding of its training images -- embedded once, dropped to zero with p_uncond (the caption
independently with p_text_drop), the zero embedding as the null condition of classifier-free
guidance, sampled from given embeddings; on pixels and on latents."""

from __future__ import annotations

import shutil

import pytest
import torch

from hirune.data import load_dataset
from networks import perturbed
from hirune.families.embedding import training_condition
from hirune.training import load, preset_config, train
from hirune.training.config import check_config
from hirune.training.trainer import Trainer

CLIP = {"channels": 8, "embed_dim": 16, "text_dim": 32, "text_depth": 1}
UNET = {"channels": 16, "channel_mult": [1, 2], "attention_resolutions": [2], "head_channels": 16}


def clip_config(out, **kw):
    return preset_config("clip-digits", {"model_config": CLIP, "batch_size": 32, "steps": 4, "ckpt_every": 4,
                                         "out": str(out), **kw})


def decoder_config(clip, out, **kw):
    return preset_config("vpred-digits", {"clip": str(clip), "model_config": UNET, "steps": 4, "sample_every": 0,
                                          "num_samples": 8, "sample_steps": 2, "ckpt_every": 4, "out": str(out),
                                          **kw})



@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    train(clip_config(root / "clip"), progress=False)
    train(decoder_config(root / "clip", root / "decoder", sample_every=4), progress=False)
    train(decoder_config(root / "clip", root / "text", text_encoder="tiny"), progress=False)
    return root


def test_the_decoder_embeds_its_training_images_once_and_reads_them(runs):
    trainer = Trainer(decoder_config(runs / "clip", runs / "fresh"))
    family = trainer.family
    images = load_dataset("digits", "train").data
    torch.testing.assert_close(family.image_embeds, family.clip.embed_image(images))
    assert family.model.config.embed_dim == 16 and family.image_embeds.shape == (len(images), 16)
    # the loss hands the network the embeddings of the batch's examples, zero where dropped
    seen = {}
    forward = family.model

    def spy(x, t, **cond):
        seen.update(cond)
        return forward(x, t, **cond)

    g = torch.Generator().manual_seed(1)
    draw = family.draw(64, g)
    idx = torch.arange(64) * 3
    batch = type("B", (), {"x": images[idx], "y": None, "idx": idx})()
    family.loss(spy, batch, draw, 0)
    expected = torch.where(draw.embed_drop[:, None], 0.0, family.image_embeds[idx])
    assert draw.embed_drop.any() and (~draw.embed_drop).any()
    torch.testing.assert_close(seen["image_embed"], expected)


def check_dropout(condition, family, n: int = 4000) -> None:
    """The harness: each example's embedding, or exactly zero where its draw dropped it, at
    the rate p_uncond."""
    draw = family.draw(n, torch.Generator().manual_seed(0))
    idx = torch.arange(n) % len(family.image_embeds)
    z = condition(family, idx, draw.embed_drop)["image_embed"]
    dropped = (z == 0).all(1)
    assert torch.equal(dropped, draw.embed_drop)
    torch.testing.assert_close(z[~dropped], family.image_embeds[idx][~dropped])
    assert abs(float(dropped.double().mean()) - family.config.p_uncond) < 4 * (0.1 * 0.9 / n) ** 0.5


def test_embedding_dropout_gives_the_zero_embedding_and_a_broken_one_is_caught(runs):
    family = Trainer(decoder_config(runs / "clip", runs / "fresh")).family
    check_dropout(training_condition, family)

    def ignores_drop(family, idx, drop):
        return training_condition(family, idx, None)

    def drops_to_mean(family, idx, drop):  # a "null" that is not the zero embedding
        z = family.image_embeds[idx]
        return {"image_embed": torch.where(drop[:, None], z.mean(0), z)}

    for broken in (ignores_drop, drops_to_mean):
        with pytest.raises(AssertionError):
            check_dropout(broken, family)


def test_text_is_dropped_independently_of_the_embedding(runs):
    family = Trainer(decoder_config(runs / "clip", runs / "fresh", text_encoder="tiny", p_text_drop=0.5)).family
    n = 20000
    d = family.draw(n, torch.Generator().manual_seed(0))
    e, t = d.embed_drop.double(), d.drop.double()
    tol = 4 * (0.25 / n) ** 0.5
    assert abs(float(e.mean()) - 0.1) < tol and abs(float(t.mean()) - 0.5) < tol
    assert abs(float((e * t).mean()) - 0.05) < tol        # P(both) = P(embedding) P(caption)
    # the dropped captions are the empty caption
    idx = torch.arange(8)
    captions = family.captioner.captions(idx, d.template[:8], d.drop[:8])
    assert [c == "" for c in captions] == d.drop[:8].tolist()


@pytest.mark.parametrize("text", [False, True])
def test_cfg_on_a_decoder_guides_against_the_zero_embedding(runs, text):
    run = perturbed(load(runs / ("text" if text else "decoder")))
    run.denoiser.clip_x0 = None                         # the guided pair itself, before any x0 clipping
    scale = 3.0
    guided = run.guide("cfg", scale)
    assert guided.null_cond["image_embed"] == 0.0
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([400.0, 400.0])
    z = run.clip.embed_image(load_dataset("digits", "test").data[:2])
    captions = ["a handwritten seven", "a handwritten one"] if text else None
    cond = run.condition(prompts=captions, embeddings=z)
    null = run.condition(prompts=["", ""] if text else None, embeddings=torch.zeros_like(z))
    with torch.no_grad():
        c, u, g = run.denoiser(x, t, **cond), run.denoiser(x, t, **null), guided(x, t, **cond)
    assert (c.eps - u.eps).abs().max() > 1e-4          # the condition matters, so the check can fail
    torch.testing.assert_close(g.eps, u.eps + scale * (c.eps - u.eps), atol=1e-5, rtol=1e-4)


def test_a_decoder_samples_from_given_embeddings_and_needs_them(runs):
    run = perturbed(load(runs / "decoder"))
    z = run.clip.embed_image(load_dataset("digits", "test").data[:3])
    a, _ = run.generate(3, steps=3, embeddings=z, progress=False)
    b, _ = run.generate(3, steps=3, embeddings=z.flip(0), progress=False)
    assert a.x.shape == (3, 1, 8, 8) and (a.x - b.x).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"unCLIP decoder run .* pass embeddings \(N, 16\)"):
        run.generate(3, steps=2, progress=False)
    with pytest.raises(ValueError, match="n=4 samples for 3 embeddings"):
        run.generate(4, steps=2, embeddings=z, progress=False)
    with pytest.raises(ValueError, match=r"embeddings of shape \(3, 8\) are not valid; valid: \(N, 16\)"):
        run.generate(3, steps=2, embeddings=z[:, :8], progress=False)
    with pytest.raises(ValueError, match="embeddings are not finite"):
        run.generate(3, steps=2, embeddings=z * float("nan"), progress=False)


def test_embeddings_are_refused_by_runs_that_are_not_decoders(runs, tmp_path):
    train(preset_config("vpred-digits", {"model_config": UNET, "steps": 1, "sample_every": 0, "ckpt_every": 1,
                                         "out": str(tmp_path / "plain")}), progress=False)
    plain = load(tmp_path / "plain")
    with pytest.raises(ValueError, match="embeddings go with an unCLIP decoder run"):
        plain.generate(2, steps=2, embeddings=torch.zeros(2, 16), progress=False)
    with pytest.raises(ValueError, match="clip=.* is not valid; valid: a trained clip run .* not a diffusion run"):
        train(decoder_config(tmp_path / "plain", tmp_path / "bad"), progress=False)


def test_bad_decoder_settings_are_named(runs, tmp_path):
    with pytest.raises(ValueError, match="model='dit' is not valid for an unCLIP decoder"):
        check_config(decoder_config(runs / "clip", tmp_path / "x", model="dit", model_config={}))
    with pytest.raises(ValueError, match="not valid with class_conditional=true"):
        check_config(decoder_config(runs / "clip", tmp_path / "x", class_conditional=True))
    with pytest.raises(ValueError, match="p_text_drop"):
        check_config(decoder_config(runs / "clip", tmp_path / "x", p_text_drop=1.0))
    with pytest.raises(FileNotFoundError, match="clip run .* does not exist; train one first"):
        train(decoder_config(tmp_path / "nowhere", tmp_path / "x"), progress=False)
    with pytest.raises(ValueError, match="dataset='mnist5k' is not valid for this decoder; valid: 'digits'"):
        train(decoder_config(runs / "clip", tmp_path / "x", dataset="mnist5k", steps=1), progress=False)


def test_a_decoder_keeps_its_clip_previews_and_resumes_exactly(runs, tmp_path):
    assert (runs / "decoder" / "references" / "clip.safetensors").is_file()
    assert any((runs / "decoder" / "samples").iterdir())          # previews from training embeddings
    shutil.copytree(runs / "clip", tmp_path / "clip")
    train(decoder_config(tmp_path / "clip", tmp_path / "half", steps=2, ckpt_every=2), progress=False)
    train(decoder_config(tmp_path / "clip", tmp_path / "half", steps=4, ckpt_every=2, resume=True), progress=False)
    a, b = load(runs / "decoder"), load(tmp_path / "half")
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)
    shutil.rmtree(tmp_path / "clip")                               # the run outlives its CLIP's directory
    z = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    assert load(tmp_path / "half").generate(2, steps=2, embeddings=z, progress=False)[0].x.isfinite().all()


def test_a_latent_decoder_embeds_pixels_and_diffuses_latents(runs, tmp_path):
    train(preset_config("kl-ae-digits", {"steps": 2, "sample_every": 0, "ckpt_every": 2, "out": str(tmp_path / "ae")}),
          progress=False)
    cfg = decoder_config(runs / "clip", tmp_path / "ldm", autoencoder=str(tmp_path / "ae"))
    trainer = Trainer(cfg)
    images = load_dataset("digits", "train").data
    torch.testing.assert_close(trainer.family.image_embeds, trainer.family.clip.embed_image(images))
    assert trainer.family.sample_shape != (1, 8, 8)
    train(cfg, progress=False)
    run = load(tmp_path / "ldm")
    z = run.clip.embed_image(images[:2])
    out, _ = run.generate(2, steps=2, embeddings=z, progress=False, denoiser=run.guide("cfg", 2.0))
    assert out.x.shape == (2, 1, 8, 8)


def test_eval_of_a_decoder_decodes_test_images_embeddings(runs, capsys):
    """`hirune eval DECODER` samples from the CLIP embeddings of test images spread over the
    split; its accuracy is the share whose class the decoding keeps (labels of those images)."""
    from hirune.cli import main

    run = load(runs / "decoder")
    seen = {}
    real = run.generate

    def spy(n, *args, **options):
        seen.update(n=n, **options)
        return real(n, *args, **options)

    run.generate = spy
    metrics = run.evaluate(20, steps=2)
    test = load_dataset("digits", "test")
    idx = torch.linspace(0, len(test.data) - 1, 20).round().long()
    torch.testing.assert_close(seen["embeddings"], run.clip.embed_image(test.data[idx]))
    assert "embedding" in metrics["drawn_from"] and 0 <= metrics["class_accuracy"] <= 1
    assert main(["eval", str(runs / "decoder"), "--n", "10", "--steps", "2"]) == 0
    assert '"drawn_from"' in capsys.readouterr().out
