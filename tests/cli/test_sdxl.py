"""`hirune sample --refiner / --switch / --original-size / --crop` (SDXL's conditioning)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hirune.cli import main

SMALL = json.dumps({"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                    "head_channels": 8})
TINY = ["steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8", "eval_samples=0", f"model_config={SMALL}"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    assert main(["train", "vpred-digits", *TINY, f"out={root / 'base'}"]) == 0
    assert main(["train", "vpred-digits", *TINY, "train_until=0.5", f"out={root / 'refiner'}"]) == 0
    assert main(["train", "vpred-digits", *TINY, "micro_conditioning=true", "micro_min_size=4", "micro_crop=2",
                 "noise_offset=0.1", f"out={root / 'micro'}"]) == 0
    return root


def _sample(*args) -> np.ndarray | int:
    return main(["sample", *map(str, args), "--n", "3", "--steps", "3"])


def test_sample_with_a_refiner(runs, tmp_path):
    for name, extra in (("plain", []), ("refined", ["--refiner", runs / "refiner"]),
                        ("early", ["--refiner", runs / "refiner", "--switch", "0.1"])):
        assert _sample(runs / "base", *extra, "--out", tmp_path / f"{name}.npz") == 0
    plain, refined, early = (np.load(tmp_path / f"{n}.npz")["samples"] for n in ("plain", "refined", "early"))
    assert not np.array_equal(plain, refined)        # the last step (from 333 <= 499) is the refiner's
    assert np.array_equal(plain, early)              # below 99 there is no grid time: the base alone


def test_sample_at_a_size_and_crop(runs, tmp_path):
    assert _sample(runs / "micro", "--original-size", "4", "--crop", "1,-1", "--out", tmp_path / "a.png") == 0
    assert _sample(runs / "micro", "--original-size", "8,8", "--out", tmp_path / "b.png") == 0


@pytest.mark.parametrize("args, message", [
    (["base", "--original-size", "4"], "original_size and crop go with a micro-conditioned run"),
    (["micro", "--crop", "1"], "--crop (1,) is not valid; valid: TOP,LEFT"),
    (["base", "--switch", "0.1"], "--switch goes with --refiner"),
    (["base", "--refiner", "micro"], "the refiner has micro_conditioning=True"),
    (["base", "--refiner", "refiner", "--switch", "0.9"], "switch=0.9 is not valid"),
])
def test_bad_input(runs, tmp_path, capsys, args, message):
    args = [runs / a if a in ("base", "micro", "refiner") else a for a in args]
    assert _sample(*args, "--out", tmp_path / "x.png") == 2
    assert message in capsys.readouterr().err
