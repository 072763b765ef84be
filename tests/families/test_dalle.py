"""The dalle family: DALL-E's loss weighting, training on a tokenizer run's codes, exact
resume, the BPE tokenizer kept in checkpoints and exports, priming, reranking with any
scorer, and bad input (long prompts, rows past the grid, tokens outside the vocabulary,
--rerank without --clip, a tokenizer run that has no tokens, a scorer that is not CLIP)."""

from __future__ import annotations

import json
import types

import pytest
import torch

from hirune.cli import main
from hirune.families.dalle import token_loss
from hirune.families.dalle_tokens import ImageTokenizer
from hirune.inference.rerank import check_scorer, rerank, sample_reranked
from hirune.models.dalle import JointVocabulary
from hirune.training.config import TrainConfig
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vq") / "vq"
    train(preset_config("vq-ae-digits", {"steps": 20, "sample_every": 0, "ckpt_every": 20, "out": str(out)}),
          progress=False)
    return out


def _config(tokenizer_run, out, **extra):
    return preset_config("dalle-digits", {"tokenizer": str(tokenizer_run), "steps": 4, "batch_size": 8,
                                          "model_config": {"width": 16, "depth": 1, "heads": 2}, "sample_every": 4,
                                          "num_samples": 4, "ckpt_every": 2, "log_every": 1, "out": str(out),
                                          **extra})


@pytest.fixture(scope="module")
def dalle_run(tokenizer_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dalle") / "run"
    train(_config(tokenizer_run, out), progress=False)
    return out


# --- the loss ---------------------------------------------------------------------------------

def test_loss_weights_text_and_image_cross_entropy_and_skips_padding():
    vocabulary = JointVocabulary(text_vocab=5, num_codes=3)
    g = torch.Generator().manual_seed(0)
    L, N = 4, 3
    logits = torch.randn(2, L + N - 1, 8, generator=g, dtype=torch.float64)
    forward = lambda text, image: logits  # noqa: E731 -- the network's output, fixed
    text = torch.tensor([[1, 3, 4, 0], [1, 0, 0, 0]])   # the second caption is empty: no text term
    codes = torch.tensor([[2, 0, 1], [1, 1, 0]])
    log_p = logits.log_softmax(-1)
    for w in (0.125, 0.0, 1.0):
        per_sample, terms = token_loss(forward, vocabulary, text, codes, w)
        text_lp = logits[..., :5].log_softmax(-1)        # text positions score text tokens only
        image_lp = logits[..., 5:].log_softmax(-1)       # image positions score codes only
        t0 = -(text_lp[0, 0, 3] + text_lp[0, 1, 4]) / 2  # targets 3, 4; the PAD target is not scored
        i = [-(image_lp[b, L - 1 + j, codes[b, j]]).mean() for b in range(2) for j in range(N)]
        i0, i1 = sum(i[:3]) / 3, sum(i[3:]) / 3
        expected = torch.stack([w * t0 + (1 - w) * i0, (1 - w) * i1])
        torch.testing.assert_close(per_sample, expected)
    assert not torch.allclose(log_p[..., 5:], image_lp)  # the masks matter


# --- training, resume, loading ----------------------------------------------------------------

def test_trains_on_the_tokenizer_codes_and_keeps_its_bpe_in_checkpoints_and_exports(dalle_run, tmp_path):
    records = [json.loads(line) for line in (dalle_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4] and {"text_loss", "image_loss"} <= set(records[0])
    assert (dalle_run / "references" / "tokenizer.safetensors").is_file()
    state = json.loads((dalle_run / "checkpoints" / "step_00000004" / "state.json").read_text())
    assert json.loads(state["text_tokenizer"])["model"]["type"] == "BPE"
    assert (dalle_run / "samples" / "step_00000004.png").is_file()
    run = load(dalle_run)
    out, labels = run.generate(6, seed=1, top_k=8)
    assert out.x.shape == (6, 1, 8, 8) and out.nfe == 16 and labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert out.x.min() >= -1 and out.x.max() <= 1
    assert torch.equal(run.generate(6, seed=1, top_k=8)[0].x, out.x)
    assert torch.equal(run.generate(6, seed=1, top_k=8, use_cache=False)[0].x, out.x)
    assert main(["export", str(dalle_run), "--out", str(tmp_path / "w.safetensors")]) == 0
    exported = load(tmp_path / "w.safetensors")
    assert torch.equal(exported.generate(6, seed=1, top_k=8)[0].x, out.x)


def test_resume_is_exact(tokenizer_run, dalle_run, tmp_path):
    half = _config(tokenizer_run, tmp_path / "half", steps=2)
    train(half, progress=False)
    train(TrainConfig.from_dict({**half.to_dict(), "steps": 4, "resume": True}), progress=False)
    straight, resumed = _losses(dalle_run), _losses(tmp_path / "half")
    assert resumed == straight
    a, b = load(dalle_run).model.state_dict(), load(tmp_path / "half").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_word_tokenizer_and_guidance(tokenizer_run, tmp_path):
    train(_config(tokenizer_run, tmp_path / "word", steps=1, text_tokenizer="word", sample_every=0, ckpt_every=1),
          progress=False)
    run = load(tmp_path / "word")
    assert run.model.config.text_vocab == run.text.vocab_size
    guided, _ = run.generate(4, prompt="a handwritten seven", scale=3.0, top_p=0.9)
    assert guided.x.shape == (4, 1, 8, 8)
    train(_config(tokenizer_run, tmp_path / "nodrop", steps=1, p_uncond=0.0, sample_every=0, ckpt_every=1),
          progress=False)
    with pytest.raises(ValueError, match="p_uncond > 0"):
        load(tmp_path / "nodrop").generate(2, scale=2.0)


# --- priming ----------------------------------------------------------------------------------

def test_priming_keeps_the_first_rows_and_all_rows_give_the_tokenized_image(dalle_run):
    from hirune.data import load_dataset

    run = load(dalle_run)
    x = load_dataset("digits", "test").data[:1]
    codes = run.image_tokenizer.encode(x)                          # (1, 4, 4)
    whole, _ = run.generate(3, prime=x, rows=4)
    assert whole.nfe == 0 and torch.equal(whole.x, run.image_tokenizer.decode(codes.expand(3, -1, -1)))
    out, _ = run.generate(5, prime=x, rows=2, seed=2)
    assert out.nfe == 8 and out.x.shape == (5, 1, 8, 8)
    for rows in (0, 5):
        with pytest.raises(ValueError, match=r"rows=\d is past the code grid: priming keeps 1..4"):
            run.generate(2, prime=x, rows=rows)
    with pytest.raises(ValueError, match="goes with an image to prime"):
        run.generate(2, rows=2)


def test_priming_codes_reach_the_sampler_unchanged(dalle_run, monkeypatch):
    """The codes of the prime's first rows are what the sampler receives, bitwise."""
    from hirune.data import load_dataset
    from hirune.families import dalle_sampling

    run = load(dalle_run)
    x = load_dataset("digits", "test").data[3:5]
    seen = {}
    real = dalle_sampling.sample_image_tokens

    def spy(model, text, image_len, **kw):
        seen["prime"] = kw["prime"].clone()
        out = real(model, text, image_len, **kw)
        seen["codes"] = out.clone()
        return out

    monkeypatch.setattr(dalle_sampling, "sample_image_tokens", spy)
    run.generate(2, prime=x, rows=3)
    expected = run.image_tokenizer.encode(x)[:, :3].flatten(1)
    assert torch.equal(seen["prime"], expected) and torch.equal(seen["codes"][:, :12], expected)


# --- bad input --------------------------------------------------------------------------------

def test_long_prompts_warn_and_ids_outside_the_vocabulary_are_refused(dalle_run):
    run = load(dalle_run)
    with pytest.warns(UserWarning, match="truncated"):
        run.generate(1, prompt="a thick handwritten seven slanted left and " * 4)
    vocab = run.model.config.text_vocab
    ids = torch.zeros(2, run.config.text_len, dtype=torch.long)
    ids[1, 3] = vocab
    with pytest.raises(ValueError, match=rf"text token {vocab} is outside the vocabulary; valid: 0..{vocab - 1}"):
        run.generate(2, text_ids=ids)
    ids[1, 3] = 1
    assert run.generate(2, text_ids=ids)[0].x.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="sampler, steps"):
        run.generate(2, "ddim")


def test_a_tokenizer_run_without_image_tokens_is_refused():
    fake = types.SimpleNamespace(model=torch.nn.Linear(2, 2), name="autoencoder",
                                 cfg=types.SimpleNamespace(model="kl_autoencoder"))
    with pytest.raises(ValueError, match="no image tokens .*num_codes, encode_codes, decode_codes missing"):
        ImageTokenizer(fake)


def test_settings_are_checked(tokenizer_run, tmp_path):
    with pytest.raises(ValueError, match="tokenizer=RUN"):
        train(_config(tokenizer_run, tmp_path / "a", tokenizer=""), progress=False)
    with pytest.raises(ValueError, match="text_tokenizer"):
        train(_config(tokenizer_run, tmp_path / "b", text_tokenizer="chars"), progress=False)
    with pytest.raises(ValueError, match=r"model_config keys \['text_len'\] of a dalle run come from its settings"):
        train(_config(tokenizer_run, tmp_path / "d", model_config={"width": 16, "text_len": 8}), progress=False)
    with pytest.raises(FileNotFoundError, match="hirune train vq-ae-mnist5k"):
        train(_config(tokenizer_run, tmp_path / "c", tokenizer=str(tmp_path / "nowhere")), progress=False)


def test_cli_sample_flags(dalle_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["sample", str(dalle_run), "--prompt", "a seven", "--top-k", "5", "--top-p", "0.9",
                 "--temperature", "0.8", "--scale", "2", "--n", "4", "--out", str(out)]) == 0 and out.is_file()
    assert main(["sample", str(dalle_run), "--prime", "test:0", "--rows", "2", "--n", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    for argv, match in [(["--prime", "test:0", "--rows", "9"], "past the code grid: priming keeps 1..4"),
                        (["--rows", "2"], "--prime IMAGE and --rows K go together"),
                        (["--rerank", "4"], "--rerank N needs --clip RUN"),
                        (["--top-k", "-1"], "top_k must be >= 0")]:
        assert main(["sample", str(dalle_run), "--n", "2", "--out", str(out), *argv]) == 2
        assert match in capsys.readouterr().err
    # a CLIP run is refused when it is not one
    assert main(["sample", str(dalle_run), "--rerank", "2", "--clip", str(dalle_run), "--out", str(out)]) == 2
    assert "needs a CLIP run" in capsys.readouterr().err


# --- reranking --------------------------------------------------------------------------------

class _BrightnessScorer:
    """A fake CLIP: the score of an image for any text is its mean brightness."""

    def similarity(self, images, texts):
        return images.flatten(1).mean(1)[:, None].expand(-1, len(texts))


def test_rerank_keeps_the_best_candidate_by_the_scorer():
    candidates = torch.stack([torch.full((3, 1, 2, 2), v) for v in (0.0, 0.5, -0.5)])   # (P=3, N=3, ...)
    candidates[0, 2] = 0.9
    candidates[1, 0] = 0.7
    best, index = rerank(candidates, ["a", "b", "c"], _BrightnessScorer())
    assert index.tolist() == [2, 0, 0] and torch.equal(best, candidates[[0, 1, 2], [2, 0, 0]])
    calls = []

    def generate(prompts):
        calls.append(list(prompts))
        return torch.arange(len(prompts), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2) % 3

    best, index = sample_reranked(generate, ["x", "y"], 3, _BrightnessScorer())
    assert calls == [["x", "x", "x", "y", "y", "y"]] and index.tolist() == [2, 2]
    with pytest.raises(ValueError, match=r"similarity gave shape"):
        rerank(candidates, ["a", "b", "c"], types.SimpleNamespace(similarity=lambda i, t: torch.zeros(len(i))))


def test_only_a_clip_run_on_the_same_dataset_reranks():
    clip = types.SimpleNamespace(name="clip", data=types.SimpleNamespace(name="mnist5k"))
    check_scorer(clip, "mnist5k")
    with pytest.raises(ValueError, match="trained on mnist5k, the samples are of digits"):
        check_scorer(clip, "digits")
    with pytest.raises(ValueError, match="needs a CLIP run .*not a diffusion run"):
        check_scorer(types.SimpleNamespace(name="diffusion", data=clip.data), "mnist5k")


def test_cli_eval_scores_samples_and_text_accuracy(dalle_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(dalle_run), "--n", "20", "--text-accuracy", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = {"frechet_distance", "class_accuracy", "train_phrasing_accuracy", "held_out_phrasing_accuracy"}
    assert expected <= set(metrics)
    assert main(["eval", str(dalle_run), "--n", "20", "--scale", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scale"] == 3.0
    assert main(["eval", str(dalle_run), "--n", "20", "--sampler", "ddim"]) == 2
    assert "--sampler, --steps and --guidance do not apply" in capsys.readouterr().err
    assert main(["eval", str(dalle_run), "--n", "20", "--guidance", "classifier"]) == 2
    assert "guided by --scale S alone" in capsys.readouterr().err


def test_cli_rerank_keeps_the_best_of_n_by_the_scorer(dalle_run, tmp_path, monkeypatch):
    """`--rerank N --clip RUN` through the CLI, the CLIP run replaced by the fake scorer:
    each kept sample is the brightest of its N candidates (drawn with the same seed)."""
    import numpy as np

    from hirune.inference import rerank as rerank_module

    monkeypatch.setattr(rerank_module, "load_scorer", lambda path, dataset: _BrightnessScorer())
    out = tmp_path / "best.npz"
    assert main(["sample", str(dalle_run), "--prompt", "a seven", "--rerank", "3", "--clip", "fake", "--n", "2",
                 "--top-k", "8", "--out", str(out)]) == 0
    best = torch.from_numpy(np.load(out)["samples"])
    candidates = load(dalle_run).generate(6, prompts=["a seven"] * 6, top_k=8, progress=False)[0].x.view(2, 3, 1, 8, 8)
    expected = candidates[torch.arange(2), candidates.flatten(2).mean(2).argmax(1)]
    assert torch.equal(best, expected)


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_two_processes_equal_one(tokenizer_run, dalle_run, tmp_path, strategy):
    """2 gloo processes with half the batch each train the same run as one process (the
    module's run: the same config), under DDP and FSDP2 (zero3, sharded checkpoints)."""
    import os
    import subprocess
    import sys

    import hirune

    out = tmp_path / strategy
    items = [f"tokenizer={tokenizer_run}", "steps=4", "batch_size=8",
             'model_config={"width": 16, "depth": 1, "heads": 2}',
             "sample_every=4", "num_samples=4", "ckpt_every=2", "log_every=1", f"out={out}", f"strategy={strategy}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(hirune.__path__[0].rsplit("/", 1)[0])}
    proc = subprocess.run([sys.executable, "-m", "hirune", "train", "dalle-digits", *items, "--nproc", "2"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    two_losses, one_losses = _losses(out), _losses(dalle_run)
    assert len(two_losses) == len(one_losses) == 4
    assert max(abs(a - b) for a, b in zip(two_losses, one_losses)) < 1e-5
    one, two = load(dalle_run).model.state_dict(), load(out).model.state_dict()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-5, msg=k)
