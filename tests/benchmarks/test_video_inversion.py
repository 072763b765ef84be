"""benchmarks/video_inversion.py: the edit captions name the changed digit (d + 5 mod 10) or the reversed
direction, and keep the rest of the clip's caption."""

from __future__ import annotations

import torch

from benchmark_scripts import load_benchmark

bench = load_benchmark("video_inversion", "video_inversion_bench")


def test_edit_captions_change_one_thing():
    attrs = {"label": torch.tensor([3, 8]), "direction": torch.tensor([0, 2]), "speed": torch.tensor([1, 2]),
             "bounced": torch.tensor([0, 1]), "thickness": torch.tensor([1, 1])}
    same, labels, dirs = bench.captions(attrs, 2)
    digit, digit_labels, digit_dirs = bench.captions(attrs, 2, label_shift=5)
    motion, motion_labels, motion_dirs = bench.captions(attrs, 2, reverse=True)
    assert labels == [3, 8] and dirs == [0, 2] and digit_labels == [8, 3] and digit_dirs == dirs
    assert motion_labels == labels and motion_dirs == [1, 3]
    assert "left" in same[0] and "right" in motion[0] and "up" in same[1] and "down" in motion[1]
    assert same[0].replace("three", "eight") == digit[0] and same[0].replace("left", "right") == motion[0]
