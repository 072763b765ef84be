"""Property: whatever key=value pairs and flags a user gives any verb, hirune answers with
exit status 0 or 2, never a traceback, and a command that exits 2 leaves the run folder it
was pointed at exactly as it was (issue 16).  Hypothesis draws the inputs from a fixed
seed and a bounded number of examples, so the suite is repeatable and stays fast."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from hirune.cli import main

# values a careless or hostile user types: numbers at and beyond the edges, words, JSON, paths
NUMBERS = st.sampled_from(["0", "-1", "-5", "1", "2", "3", "1e12", "1e-12", "inf", "-inf", "nan", "1000000000",
                           "2.5", "0.0", "-0.1"])
WORDS = st.sampled_from(["", "banana", "true", "false", "cuda", "cpu", "cuda:7", "auto", "/nope", ".", "..",
                         "{}", '{"size": "huge"}', "[1, 2]", "ddim", "heun", "ot", "v", "eps", "none"])
VALUES = st.one_of(NUMBERS, WORDS)
KEYS = st.sampled_from(["steps", "batch_size", "grad_accum", "lr", "warmup", "lr_schedule", "min_lr_ratio",
                        "weight_decay", "grad_clip", "ema_decay", "precision", "strategy", "seed", "log_every",
                        "sample_every", "ckpt_every", "num_samples", "eval_samples", "device", "dataset",
                        "model", "model_config", "family", "process", "objective", "prediction", "weighting",
                        "sampler", "sample_steps", "p_uncond", "class_conditional", "coupling", "resume",
                        "banana"])
FLAGS = st.lists(st.tuples(st.sampled_from(["--n", "--steps", "--seed", "--class", "--scale", "--nll",
                                            "--spacing", "--sampler", "--guidance", "--temperature",
                                            "--denoising-error", "--text-accuracy", "--prompt"]),
                           VALUES), max_size=3)


# counts whose legal huge values would only cost time (the refusals of impossible ones are
# tested with the checks themselves): capped so that an example takes well under a second
COSTLY = {"eval_samples", "num_samples", "sample_steps", "--n", "--steps", "--nll", "--denoising-error",
          "--text-accuracy"}


def tame(key: str, value: str) -> str:
    try:
        return "16" if key in COSTLY and float(value) > 16 else value
    except ValueError:
        return value


BASE = ["train", "ddpm-two-moons", 'model_config={"hidden": 8, "depth": 1}', "batch_size=8", "sample_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "run"
    assert main([*BASE, "steps=2", f"out={out}"]) == 0
    return out


def snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


def run(words: list[str], folder: Path, capsys) -> None:
    before = snapshot(folder)
    code = main(words)  # a bug raises out of main: the test fails with its traceback
    err = capsys.readouterr().err
    if currently_in_test_context():
        event(f"exit {code}")  # --hypothesis-show-statistics shows how often each outcome occurs
    assert code in (0, 2), (words, code, err[-2000:])
    assert "Traceback" not in err, (words, err[-2000:])
    if code == 2:
        assert err.strip().splitlines()[-1].startswith("hirune "), (words, err[-500:])
        assert snapshot(folder) == before, words


@seed(16)
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pairs=st.lists(st.tuples(KEYS, VALUES), max_size=2), into_the_run=st.booleans())
def test_train_with_random_settings_exits_0_or_2(trained, tmp_path_factory, capsys, pairs, into_the_run):
    folder = tmp_path_factory.mktemp("train") / "run"
    if into_the_run:  # resuming an existing run for one more step: exit 2 must leave it untouched
        shutil.copytree(trained, folder)
    words = [f"{k}={tame(k, v)}" for k, v in pairs if k not in ("steps", "resume")] \
        + (["steps=3", "resume=true"] if into_the_run else ["steps=2"])
    run([*BASE, *words, f"out={folder}"], folder, capsys)


@seed(16)
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(verb=st.sampled_from(["sample", "eval", "invert", "edit", "export"]), flags=FLAGS)
def test_every_verb_with_random_flags_exits_0_or_2(trained, tmp_path_factory, capsys, verb, flags):
    folder = tmp_path_factory.mktemp("verb") / "run"
    shutil.copytree(trained, folder)
    out = folder.parent / ("x.png" if verb != "export" else "x.safetensors")
    words = [verb, str(folder)] + (["test:0"] if verb in ("invert", "edit") else []) \
        + (["--to", "3"] if verb == "edit" else [])
    for flag, value in flags:
        if verb == "export" or (verb == "eval" and flag in ("--class", "--prompt", "--spacing", "--temperature")):
            continue  # flags the verb does not have: argparse's own exit 2 is tested elsewhere
        if verb in ("invert", "edit") and flag not in ("--steps", "--class", "--prompt", "--scale"):
            continue
        words += [flag, tame(flag, value)]
    if verb != "eval":
        words += ["--out", str(out)]
    try:
        run(words, folder, capsys)
    except SystemExit as e:  # argparse refusing a value of the wrong type: its own usage error
        assert e.code == 2


def test_the_harness_rejects_a_traceback_a_bad_exit_and_a_folder_changed_on_exit_2(trained, tmp_path, capsys,
                                                                                    monkeypatch):
    """`run` catches each way a command can misbehave (a harness that cannot fail is no test)."""
    import sys
    import traceback

    import hirune.cli as cli

    folder = tmp_path / "run"
    shutil.copytree(trained, folder)

    def command(behaviour):
        def fake(argv=None):
            if behaviour == "bug":
                raise KeyError("files")
            if behaviour == "traceback":
                try:
                    raise KeyError("files")
                except KeyError:
                    traceback.print_exc()
                return 0
            if behaviour == "exit 1":
                return 1
            (folder / "metrics.jsonl").write_text("")  # "refused", but the run was touched
            print("hirune train: error: refused", file=sys.stderr)
            return 2
        return fake

    for behaviour, error in (("bug", KeyError), ("traceback", AssertionError), ("exit 1", AssertionError),
                             ("changed on exit 2", AssertionError)):
        monkeypatch.setattr(sys.modules[__name__], "main", command(behaviour))
        with pytest.raises(error):
            run(["train"], folder, capsys)
    monkeypatch.setattr(sys.modules[__name__], "main", cli.main)
