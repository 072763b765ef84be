"""benchmarks/progressive.py on tiny pixel-space runs: `network` rebuilds a 16 x 16 run's weights
for 32 x 32 exactly as a progressive run starts (the same fixed-draw loss, bitwise), the
positions matter to it (interpolate scores otherwise), and `score` gives every measure."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from benchmark_scripts import load_benchmark
from hirune.training.loop import train
from hirune.training.presets import preset_config

bench = load_benchmark("progressive", "progressive_bench")

NET = {"size": "tiny", "patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2}
TINY = {"autoencoder": "", "steps": 2, "batch_size": 4, "ckpt_every": 2, "sample_every": 0, "log_every": 1}


@pytest.mark.slow
def test_network_moves_a_run_to_a_larger_grid_as_a_progressive_run_starts(tmp_path):
    low = tmp_path / "low"
    train(preset_config("cogvideox-moving-mnist5k-16", {**TINY, "out": str(low), "model_config": NET}),
          progress=False)
    with torch.no_grad():  # weights off adaLN-Zero's start, so the positions show in the output
        state = {k: v + 0.2 * torch.randn_like(v) for k, v in bench.network(low).state_dict().items()}
    family = bench.prepared("cogvideox-progressive-moving-mnist5k", tmp_path / "up", **TINY, base=str(low))
    family.model.load_state_dict(state)
    started = bench.fixed_draw_loss(family, n=16)
    moved = {s: bench.network(low, s, 32) for s in bench.SCALINGS}
    assert moved["interpolate"].config.rope_base == (9, 4, 4) and moved["extrapolate"].config.rope_base is None
    for model in moved.values():
        model.load_state_dict(state)
    args = SimpleNamespace(scale=1.0, n=2)
    metrics, clips = bench.score(family, moved["extrapolate"], args)
    assert metrics["fixed_draw_loss"] == bench.fixed_draw_loss(family, n=512)
    assert bench.fixed_draw_loss(family, n=16) == started  # extrapolate: the progressive run's own start
    assert clips.shape == (20, 1, 9, 32, 32) and math.isfinite(metrics["frechet_distance_frames"])
    family.model.load_state_dict(moved["interpolate"].state_dict())
    family.model.config = moved["interpolate"].config
    assert abs(bench.fixed_draw_loss(family, n=16) - started) > 1e-4
