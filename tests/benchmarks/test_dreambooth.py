"""benchmarks/dreambooth.py end to end on a tiny 28 x 28 text run (2 steps per row): the base's
row and lambda = 0 and 1, each column a share or a distance, the class images drawn once."""

from __future__ import annotations

import json

import pytest

from hirune.training.loop import train
from hirune.training.presets import preset_config
from benchmark_scripts import load_benchmark

bench = load_benchmark("dreambooth", "dreambooth_benchmark")


@pytest.mark.slow
def test_the_table_on_a_tiny_run(tmp_path, monkeypatch):
    base = tmp_path / "base"
    train(preset_config("text-mnist5k", {"steps": 2, "ckpt_every": 2, "sample_every": 0, "batch_size": 8,
                                         "eval_samples": 0, "model_config": {
                                             "channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                             "attention_resolutions": [2], "head_channels": 8},
                                         "out": str(base)}), progress=False)
    drawn = []
    original = bench.finetune_config

    def counting(kind, base_run, overrides):
        drawn.append(overrides)
        return original(kind, base_run, {**overrides, "sample_steps": 2})

    monkeypatch.setattr(bench, "finetune_config", counting)
    out = tmp_path / "table"
    assert bench.main([str(base), "--steps", "2", "--n", "9", "--sample-steps", "2", "--class-images", "4",
                       "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [r["name"] for r in rows] == ["base (before tuning)", "full, lambda=0", "full, lambda=1"]
    for r in rows:
        for key in ("fidelity", "drift", "sks_read_as_seven", "other_digits_accuracy"):
            assert 0 <= r[key] <= 1
        assert r["diversity"] > 0
    assert [d["prior_weight"] for d in drawn] == [0.0, 1.0] and report["same_class_images"]
    assert "| full, lambda=1 |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()
