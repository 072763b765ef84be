"""benchmarks/video.py: the loss's step-to-step spread, on hand-made metrics (noise of a known std around a slow
trend, which the moving average removes; a constant loss has none)."""

from __future__ import annotations

import json

import torch

from benchmark_scripts import load_benchmark

bench = load_benchmark("video", "video_bench")


def _metrics(tmp_path, losses):
    lines = [json.dumps({"step": i + 1, "loss": float(v)}) for i, v in enumerate(losses)]
    (tmp_path / "metrics.jsonl").write_text("\n".join([json.dumps({"step": 0, "eval": 1})] + lines) + "\n")
    return tmp_path


def test_loss_spread_is_the_noise_around_the_trend(tmp_path):
    torch.manual_seed(0)
    steps = torch.arange(2000, dtype=torch.float64)
    trend = 1.0 / (1 + steps / 200)
    noisy = trend + 0.02 * torch.randn(2000, dtype=torch.float64)
    spread = bench.loss_spread(_metrics(tmp_path, noisy))
    assert abs(spread / 0.02 - 1) < 0.1  # the moving average leaves sqrt(1 - 1/25) of the noise
    assert bench.loss_spread(_metrics(tmp_path, trend)) < 1e-4  # the trend alone: no spread
