"""`hirune train lora | finetune BASE_RUN` and `hirune sample RUN --adapter A[:W] [--merge]`
on tiny digit runs: what they write, the samples through adapters (weights, merging, an
adapter run alone), and the refusals by name (another base, bad weight syntax)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from optional import needs
from hirune.checkpoint import latest_checkpoint
from hirune.cli import main

pytestmark = needs("peft")

SMALL = json.dumps({"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                    "head_channels": 16})
TINY = ["steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, seed in (("base", 0), ("other", 1)):
        assert main(["train", "vpred-digits", *TINY, f"model_config={SMALL}", f"seed={seed}",
                     f"out={root / name}"]) == 0
    assert main(["train", "lora", str(root / "base"), *TINY, "lora_rank=2", f"out={root / 'a'}"]) == 0
    assert main(["train", "lora", str(root / "base"), *TINY, "lora_targets=all-linear", "seed=5",
                 f"out={root / 'b'}"]) == 0
    return root


def _samples(path) -> np.ndarray:
    return np.load(path)["samples"]


def _sample(runs, *args) -> int:
    return main(["sample", *map(str, args), "--n", "4", "--steps", "3"])


def test_train_lora_writes_an_adapter_run_with_the_base_config(runs):
    config = json.loads((runs / "a" / "config.json").read_text())
    section = config["family_config"]
    assert section["base"] == str(runs / "base") and section["adapter"] == "lora" and section["lora_rank"] == 2
    assert config["lr"] == 1e-3 and config["lr_schedule"] == "constant" and config["sample_every"] == 0
    base = json.loads((runs / "base" / "config.json").read_text())
    assert {k: v for k, v in section.items() if k not in ("base", "adapter", "lora_rank")} == \
        {k: v for k, v in base["family_config"].items() if k not in ("base", "adapter", "lora_rank")}
    assert (runs / "a" / "adapter" / "adapter_model.safetensors").is_file()


def test_train_lora_names_its_run_after_the_base(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "lora", str(runs / "base"), "steps=1", "ckpt_every=1", "batch_size=8"]) == 0
    assert latest_checkpoint(tmp_path / "runs" / "base-lora") is not None
    assert main(["train", "finetune", str(runs / "base"), "steps=1", "ckpt_every=1", "batch_size=8"]) == 0
    config = json.loads((tmp_path / "runs" / "base-finetune" / "config.json").read_text())
    assert config["family_config"]["adapter"] == "" and config["lr"] == 1e-4
    assert main(["train", "lora"]) == 2
    assert "needs the base run" in capsys.readouterr().err


def test_sample_through_adapters_with_weights_and_merged(runs, tmp_path):
    out = tmp_path / "s.npz"
    assert _sample(runs, runs / "base", "--out", out) == 0
    base = _samples(out)
    assert _sample(runs, runs / "base", "--adapter", f"{runs / 'a'}:0", "--out", out) == 0
    assert np.array_equal(_samples(out), base)                      # weight 0: the base
    assert _sample(runs, runs / "a", "--out", out) == 0             # an adapter run alone: its base + adapter
    alone = _samples(out)
    assert _sample(runs, runs / "base", "--adapter", runs / "a", "--out", out) == 0
    assert np.array_equal(_samples(out), alone)                     # the same as its base + --adapter it
    assert _sample(runs, runs / "base", "--adapter", runs / "a", "--merge", "--out", out) == 0
    assert np.abs(_samples(out) - alone).max() < 1e-4               # merged: the same up to rounding
    assert _sample(runs, runs / "a", "--adapter", f"{runs / 'a'}:0.5", "--adapter", f"{runs / 'b' / 'adapter'}:2",
                   "--out", out) == 0                              # its own at 0.5, another from its folder
    assert np.isfinite(_samples(out)).all()


def test_an_adapter_of_another_base_is_refused_naming_both(runs, tmp_path, capsys):
    assert _sample(runs, runs / "other", "--adapter", runs / "a", "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err
    assert f"adapter {runs / 'a'} was trained on the base {runs / 'base'} at step 2" in err
    assert f"not on this run's {runs / 'other'} at step 2" in err


@pytest.mark.parametrize("text", ["nowhere:abc", "x:inf", "x:"])
def test_bad_adapter_syntax_is_refused(runs, tmp_path, capsys, text):
    assert _sample(runs, runs / "base", "--adapter", text, "--out", tmp_path / "x.png") == 2
    assert "valid: A or A:W with a finite number W" in capsys.readouterr().err


def test_other_bad_adapter_input(runs, tmp_path, capsys):
    assert _sample(runs, runs / "base", "--adapter", tmp_path / "missing", "--out", tmp_path / "x.png") == 2
    assert "does not exist" in capsys.readouterr().err
    assert _sample(runs, runs / "base", "--adapter", runs / "other", "--out", tmp_path / "x.png") == 2
    assert "is not valid as an adapter" in capsys.readouterr().err
    assert _sample(runs, runs / "base", "--merge", "--out", tmp_path / "x.png") == 2
    assert "--merge merges adapters" in capsys.readouterr().err
