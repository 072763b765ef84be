"""`hirune train textual-inversion BASE_RUN instance=... initializer=...` and `hirune sample RUN
--embedding FILE --prompt "an image of <s*>"` on a tiny text run of the 8 x 8 digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hirune.cli import main

SMALL = json.dumps({"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                    "head_channels": 16})
TINY = ["steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8", "eval_samples=0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", "text-digits", *TINY, f"model_config={SMALL}", f"out={root / 'base'}"]) == 0
    assert main(["train", "textual-inversion", str(root / "base"), *TINY, "instance=digit:7",
                 "initializer=seven", f"out={root / 'ti'}"]) == 0
    return root


def test_train_writes_the_embedding_with_the_defaults(runs):
    config = json.loads((runs / "ti" / "config.json").read_text())
    section = config["family_config"]
    assert section["placeholder"] == "<s*>" and section["initializer"] == "seven" and section["instance"] == "digit:7"
    assert config["lr"] == 5e-3 and section["p_uncond"] == 0.0
    assert (runs / "ti" / "embedding.safetensors").stat().st_size < 4096


def test_the_run_is_named_after_the_base(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "textual-inversion", str(runs / "base"), "steps=1", "ckpt_every=1", "batch_size=8",
                 "instance=digit:3", "initializer=three"]) == 0
    assert (tmp_path / "runs" / "base-ti" / "embedding.safetensors").is_file()


def test_sample_with_the_embedding_is_the_run_itself(runs, tmp_path):
    args = ["--prompt", "an image of <s*>", "--n", "4", "--steps", "3"]
    assert main(["sample", str(runs / "base"), "--embedding", str(runs / "ti" / "embedding.safetensors"), *args,
                 "--out", str(tmp_path / "a.npz")]) == 0
    assert main(["sample", str(runs / "ti"), *args, "--out", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"]
    assert np.array_equal(a, b)
    assert main(["sample", str(runs / "base"), *args, "--out", str(tmp_path / "c.png")]) == 0   # [UNK] there


def test_a_placeholder_in_the_vocabulary_is_refused(runs, tmp_path, capsys):
    assert main(["train", "textual-inversion", str(runs / "base"), *TINY, "instance=digit:7", "initializer=seven",
                 "placeholder=digit", f"out={tmp_path / 'x'}"]) != 0
    err = capsys.readouterr().err
    assert "placeholder='digit' is not valid: the tiny text encoder's vocabulary already has it" in err


def test_embedding_on_a_run_without_text_is_refused(runs, tmp_path, capsys):
    assert main(["train", "vpred-digits", *TINY, f"model_config={SMALL}", f"out={tmp_path / 'plain'}"]) == 0
    assert main(["sample", str(tmp_path / "plain"), "--embedding", str(runs / "ti"), "--n", "2"]) != 0
    assert "learned for the text encoder kind tiny" in capsys.readouterr().err
