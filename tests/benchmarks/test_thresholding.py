"""benchmarks/thresholding.py: the saturation shares on hand-made values, and the sweep end
to end on a tiny class-conditional digits run (table, JSON, picture)."""

from __future__ import annotations

import json

import torch

from hirune.cli import main as hirune
from benchmark_scripts import load_benchmark

bench = load_benchmark("thresholding", "thresholding_bench")


def test_saturation_shares_on_hand_made_values():
    x = torch.tensor([[-1.5, -1.0, 0.0, 0.99, 1.0, 2.0, 0.5, 0.2]])
    s = bench.saturation(x)
    assert s["beyond_range"] == 2 / 8  # -1.5 and 2.0, before the clamp
    assert s["saturated"] == 4 / 8  # -1.5 -> -1, -1.0, 1.0, 2.0 -> 1 (0.99 < 1 - 1/255 = 0.99608 is not)
    assert s["saturated_high"] == 2 / 8


def test_the_sweep_writes_a_table_json_and_picture(tmp_path, capsys):
    run = tmp_path / "digits"
    assert hirune(["train", "ddpm-digits", "steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8",
                   "class_conditional=true", 'model_config={"channels":8,"channel_mult":[1],"num_res_blocks":1,'
                   '"attention_resolutions":[]}', f"out={run}"]) == 0
    out = tmp_path / "bench"
    assert bench.main([str(run), "--n", "10", "--scales", "8", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads((out / "thresholding.json").read_text())
    assert [p["threshold"] for p in result["points"]] == ["none", "static", "dynamic"]
    for p in result["points"][1:]:
        assert p["beyond_range"] == 0  # ddim ends on the thresholded x0
    assert (out / "thresholding.png").stat().st_size > 0 and "| 8 | dynamic |" in capsys.readouterr().out
