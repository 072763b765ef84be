"""The prior family (`families/prior.py`): the loss regresses the network on the
standardised CLIP image embeddings under the drawn captions (dropped to ""); its draw
slices by rows; the standardisation survives a checkpoint; a run loads light and samples
unit embeddings; best-of keeps the candidate nearest the text embedding; a reference that
is not a clip run, or a clip run on other data, is refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from hirune import objectives as O
from hirune.data import data_format
from hirune.families.base import Batch
from hirune.families.prior import Prior, PriorDraw, check_clip_reference, pick_best
from hirune.training import load, preset_config, train
from hirune.training.config import check_config

CLIP_SMALL = {"channels": 8, "embed_dim": 16, "text_dim": 32, "text_depth": 1}
PRIOR_SMALL = {"width": 32, "depth": 1, "heads": 2}


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip") / "run"
    cfg = preset_config("clip-digits", {"model_config": CLIP_SMALL, "batch_size": 32, "steps": 2, "ckpt_every": 2,
                                        "log_every": 1, "warmup": 1, "out": str(out)})
    train(cfg, progress=False)
    return out


def prior_config(clip_run, out, **kw):
    return preset_config("prior-mnist5k", {"dataset": "digits", "clip": str(clip_run), "model_config": PRIOR_SMALL,
                                           "batch_size": 16, "steps": 3, "ckpt_every": 3, "log_every": 1,
                                           "warmup": 1, "out": str(out), **kw})


@pytest.fixture(scope="module")
def prior_run(clip_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "run"
    return train(prior_config(clip_run, out), progress=False), out


def test_checkpoint_round_trip_of_the_standardisation_and_a_light_load(prior_run):
    trainer, out = prior_run
    family = trainer.family
    z = family.clip.embed_image(family.train_data.data)
    torch.testing.assert_close(family.mean, z.mean(0))
    torch.testing.assert_close(family.std, z.std(0))
    torch.testing.assert_close(family.embeddings.mean(0), torch.zeros(z.shape[1]), atol=1e-5, rtol=0)
    run = load(out)
    torch.testing.assert_close(run.mean, family.mean)
    torch.testing.assert_close(run.std, family.std)
    assert run.train_data is None and run.embeddings is None        # light: no data, no embeddings
    assert run.clip.name == "clip" and not any(p.requires_grad for p in run.clip.model.parameters())
    assert (out / "references" / "clip.safetensors").exists()


def test_loss_regresses_on_the_drawn_captions_and_dropout_gives_the_empty_caption(prior_run):
    family = prior_run[0].family
    g = torch.Generator().manual_seed(0)
    draw = family.draw(6, g)
    draw.drop = torch.tensor([True, False, False, True, False, False])
    idx = torch.arange(6) * 7
    seen = {}

    def forward(x, t, **cond):
        seen.update(cond)
        return family.model(x, t, **cond)

    out = family.loss(forward, Batch(family.embeddings[idx], None, idx), draw, 0)
    captions = family.captioner.captions(idx, draw.template, draw.drop)
    assert captions[0] == "" and captions[3] == "" and captions[1] != ""
    torch.testing.assert_close(seen["text_emb"], family.clip.embed_text(captions))
    tokens, mask = family.clip.embed_text_tokens(captions)
    torch.testing.assert_close(seen["text_tokens"], tokens)
    # the regression of the x0 target, by hand
    expected = O.regression_loss(family.model, family.process, family.embeddings[idx], target="x0",
                                 cond=family.condition(captions), t=draw.t, noise=draw.noise)
    torch.testing.assert_close(out.loss, expected.loss)
    x0 = family.embeddings[idx]
    c = family.process.coefficients(draw.t, x0)
    a, s = c.alpha, c.sigma
    pred = family.model(a * x0 + s * draw.noise, draw.t, **family.condition(captions))
    torch.testing.assert_close(out.loss, ((pred - x0) ** 2).mean(), rtol=1e-4, atol=1e-6)


def test_draw_slices_by_rows(prior_run):
    family = prior_run[0].family
    d = family.draw(8, torch.Generator().manual_seed(1))
    part = d.slice(slice(2, 5))
    assert isinstance(part, PriorDraw)
    for f in ("drop", "template", "t", "noise"):
        assert torch.equal(getattr(part, f), getattr(d, f)[2:5])
    assert d.noise.shape == (8, family.dim)


def test_best_of_keeps_the_candidate_nearest_the_text_embedding():
    text = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    candidates = F.normalize(torch.tensor([[[0.0, 1.0], [1.0, 0.2]],      # row 0: the second is nearer
                                           [[0.1, 1.0], [1.0, 0.0]]]), dim=-1)  # row 1: the first
    expected = torch.stack([candidates[0, 1], candidates[1, 0]])
    assert torch.equal(pick_best(candidates, text), expected)
    broken_lower = lambda c, t: c[torch.arange(len(c)), torch.einsum("nkd,nd->nk", c, t).argmin(1)]  # noqa: E731
    broken_first = lambda c, t: c[:, 0]                                                              # noqa: E731
    for broken in (broken_lower, broken_first):
        assert not torch.equal(broken(candidates, text), expected)


def test_generate_embeddings_gives_unit_vectors_and_picks_among_the_candidates(prior_run, monkeypatch):
    run = load(prior_run[1])
    z = run.generate_embeddings(["a handwritten seven", "a thin two"], scale=2.0, steps=3, progress=False)
    assert z.shape == (2, run.dim)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2))
    import hirune.families.prior as P

    seen = {}
    real = P.pick_best

    def spy(c, t):
        seen["k"] = c.shape[1]
        return real(c, t)

    monkeypatch.setattr(P, "pick_best", spy)
    run.generate_embeddings(["a handwritten one"], best_of=3, steps=2, progress=False)
    assert seen["k"] == 3
    assert run.generate(3, steps=2, progress=False).shape == (3, run.dim)
    with pytest.raises(ValueError, match="not images"):
        run.generate(3, steps=2, denoiser=run.denoiser)               # `hirune sample` asks for images
    with pytest.raises(ValueError, match="valid: \\['none', 'cfg'\\]"):
        run.guide("classifier", 2.0)
    report = run.evaluate(4, steps=2)
    assert 0 <= report["held_out/best_of_2/zero_shot"] <= 1 and -1 <= report["train/best_of_1/cosine"] <= 1


def test_a_reference_that_is_not_a_clip_run_or_on_other_data_is_refused(clip_run, prior_run, tmp_path):
    clip = load(clip_run)
    with pytest.raises(ValueError, match="dataset='mnist5k' is not valid for this prior; valid: 'digits'"):
        check_clip_reference(clip, "mnist5k")
    cfg = prior_config(clip_run, tmp_path / "x", dataset="mnist5k")
    with pytest.raises(ValueError, match="valid: 'digits'"):
        Prior(cfg, cfg.section(), data_format("mnist5k"), "cpu", {"clip": clip})
    not_clip = load(prior_run[1])                                      # a prior run is not a clip run
    with pytest.raises(ValueError, match="valid: a trained clip run"):
        check_clip_reference(not_clip, "digits")
    with pytest.raises(ValueError, match="valid: a trained clip run"):
        train(prior_config(prior_run[1], tmp_path / "y"), progress=False)


def test_settings_are_checked(clip_run, tmp_path):
    for bad, match in (({"clip": ""}, "clip='' is not valid"), ({"prediction": "score"}, "prediction"),
                       ({"best_of": 0}, "best_of"), ({"p_uncond": 1.0}, "p_uncond"),
                       ({"sampler": "nope"}, "sampler")):
        with pytest.raises(ValueError, match=match):
            check_config(prior_config(clip_run, tmp_path / "z", **bad))


def test_clip_token_encodings_pool_and_project_to_its_text_embedding(clip_run):
    """embed_text_tokens is the text tower before pooling and projection: pooling the real
    tokens and projecting gives embed_text exactly."""
    from hirune.nn.context import masked_mean

    clip = load(clip_run)
    texts = ["a handwritten seven", "", "a thick three slanted left"]
    tokens, mask = clip.embed_text_tokens(texts)
    assert tokens.shape == (3, clip.text.max_len, clip.model.config.text_dim) and mask.dtype == torch.bool
    assert mask[0].sum() < mask.shape[1]                                # padding is there and marked
    pooled = F.normalize(clip.model.text.proj(masked_mean(tokens, mask)), dim=-1)
    torch.testing.assert_close(pooled, clip.embed_text(texts))
    bad = tokens.clone()
    bad[~mask] = 5.0                                                    # a mean over the padding too differs
    assert not torch.allclose(F.normalize(clip.model.text.proj(bad.mean(1)), dim=-1), clip.embed_text(texts))


def test_a_prior_run_resumes_exactly(clip_run, prior_run, tmp_path):
    trainer = prior_run[0]
    other = prior_config(clip_run, tmp_path / "b")
    train(other, stop_after=2, progress=False)
    resumed = train(dataclasses.replace(other, resume=True), progress=False)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    torch.testing.assert_close(resumed.family.mean, trainer.family.mean)


def test_hirune_eval_guides_a_prior_at_its_scale(prior_run, capsys, monkeypatch):
    """--scale reaches the prior's own evaluation (it is guided by a bare scale, like dalle);
    a diffusion run's options (thresholding, classifier guidance) are refused by name."""
    import json

    from hirune.cli import main
    from hirune.families.prior import Prior

    seen = []
    real = Prior.evaluate
    monkeypatch.setattr(Prior, "evaluate", lambda self, n=None, **kw: seen.append(kw) or real(self, n, **kw))
    _, out = prior_run
    assert main(["eval", str(out), "--n", "4", "--steps", "2", "--scale", "2"]) == 0
    assert seen[-1]["scale"] == 2.0 and "denoiser" not in seen[-1]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scale"] == 2.0
    assert main(["eval", str(out), "--n", "4", "--threshold", "dynamic"]) == 2
    assert "not valid for a prior run" in capsys.readouterr().err
