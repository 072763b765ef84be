"""benchmarks/lora_domain.py end to end on a tiny digit run (2 steps per row): one row per
rank, full fine-tuning and the equal-parameter pair, with the sizes each row claims."""

from __future__ import annotations

import json

import pytest

from hirune.training.loop import train
from hirune.training.presets import preset_config
from benchmark_scripts import load_benchmark

pytest.importorskip("peft")

lora_domain = load_benchmark("lora_domain")


@pytest.mark.slow
def test_the_table_on_a_tiny_run(tmp_path, capsys):
    base = tmp_path / "base"
    train(preset_config("vpred-digits", {"steps": 2, "ckpt_every": 2, "sample_every": 0, "batch_size": 8,
                                         "model_config": {"channels": 16, "channel_mult": [1, 2],
                                                          "num_res_blocks": 1, "attention_resolutions": [2],
                                                          "head_channels": 16},
                                         "out": str(base)}), progress=False)
    out = tmp_path / "table"
    assert lora_domain.main([str(base), "--dataset", "digits", "--steps", "2", "--ranks", "1", "4", "--n", "20",
                             "--sample-steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert len(rows) == 5 and "| full fine-tuning |" in out.with_suffix(".md").read_text()
    r1, r4, full = rows["LoRA rank 1 (q, k, v, proj)"], rows["LoRA rank 4 (q, k, v, proj)"], rows["full fine-tuning"]
    assert r4["trainable"] == 4 * r1["trainable"] and full["trainable"] == full["total"]
    assert r1["optimizer_bytes"] < r4["optimizer_bytes"] < full["optimizer_bytes"]
    assert r4["file_bytes"] < full["file_bytes"]
    assert rows["LoRA rank 2 on q, k, v, proj"]["trainable"] == rows["LoRA rank 8 on q alone"]["trainable"]
    assert all(r["frechet_distance"] > 0 for r in rows.values())
