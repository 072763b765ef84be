"""benchmarks/textual_inversion.py end to end on a tiny text run (2 steps per method): the rows,
what each ships and trains, and the PNG."""

from __future__ import annotations

import json

import pytest

from hirune.training.loop import train
from hirune.training.presets import preset_config
from benchmark_scripts import load_benchmark

pytest.importorskip("peft")

bench = load_benchmark("textual_inversion", "textual_inversion_bench")


@pytest.mark.slow
def test_the_table_on_a_tiny_run(tmp_path):
    base = tmp_path / "base"
    train(preset_config("text-digits", {"steps": 2, "ckpt_every": 2, "sample_every": 0, "batch_size": 8,
                                        "eval_samples": 0,
                                        "model_config": {"channels": 16, "channel_mult": [1, 2],
                                                         "num_res_blocks": 1, "attention_resolutions": [2],
                                                         "head_channels": 16},
                                        "out": str(base)}), progress=False)
    out = tmp_path / "table"
    assert bench.main([str(base), "--instance", "thick:3", "--steps", "2", "--batch", "8", "--n", "10",
                       "--sample-steps", "2", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    ti, lora = rows["textual inversion"], rows["LoRA rank 4 (q, k, v, proj)"]
    assert ti["trainable"] == 128 and ti["prompt"] == "an image of <s*>" and lora["prompt"] == "a sks digit"
    assert ti["file_bytes"] < 4096 < lora["file_bytes"] and lora["trainable"] > ti["trainable"]
    assert all(0 <= r[stage]["share"] <= 1 for r in rows.values() for stage in ("before", "after"))
    assert out.with_suffix(".png").stat().st_size > 0 and "| textual inversion |" in out.with_suffix(".md").read_text()
    with pytest.raises(ValueError, match="digit:D or thick:D"):
        bench.instance_digit("images/")
