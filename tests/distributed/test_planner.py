"""The planner's formulas against hand-computed values and the ZeRO paper's own example."""

from __future__ import annotations

import pytest
import torch

from hirune.distributed.planner import collectives_per_step, memory_per_gpu, plan, ring_time

GB = 1e9


@pytest.mark.parametrize("strategy, expected_gb", [("ddp", 120.0), ("zero1", 31.4), ("zero2", 16.6),
                                                   ("zero3", 1.9)])
def test_zero_paper_figure_1(strategy, expected_gb):
    """Rajbhandari et al. 2020, Figure 1: a 7.5 B-parameter model on 64 GPUs, mixed-precision
    Adam (K = 12), model states only."""
    m = memory_per_gpu(7_500_000_000, strategy, 64, "mixed", ema=False)
    assert abs(m.total / GB - expected_gb) < 0.05


def test_memory_by_hand():
    p, n = 1_000_000, 4
    rows = {s: memory_per_gpu(p, s, n, "mixed", activations=5e5) for s in ("ddp", "zero1", "zero2", "zero3")}
    assert [(r.weights, r.gradients, r.optimizer, r.ema) for r in rows.values()] == [
        (2e6, 2e6, 12e6, 4e6), (2e6, 2e6, 3e6, 4e6), (2e6, 5e5, 3e6, 1e6), (5e5, 5e5, 3e6, 1e6)]
    assert rows["ddp"].total == 20.5e6
    fp32 = memory_per_gpu(p, "zero3", n, "fp32", ema=False)
    assert (fp32.weights, fp32.gradients, fp32.optimizer) == (1e6, 1e6, 2e6)


def test_communication_volume_by_hand():
    """Per GPU per step, 4 ranks, 1 M bf16 gradients: all-reduce moves 2 x 3/4 x 2 MB = 3 MB;
    ZeRO-3 moves 1.5x that (ZeRO sec. 7), ZeRO-2 the same as DDP."""
    p, n = 1_000_000, 4
    vol = {s: plan(p, s, n).comm_bytes for s in ("ddp", "zero1", "zero2", "zero3")}
    assert vol["ddp"] == 3e6 and vol["zero2"] == 3e6 and vol["zero3"] == 4.5e6
    assert vol["zero1"] == 3e6 + 1.5e6  # hirune's ZeRO-1 all-reduces, then gathers the weight shards
    # accumulation: DDP still communicates once per step, FSDP2 once per micro-batch
    assert plan(p, "ddp", n, grad_accum=4).comm_bytes == 3e6
    assert plan(p, "zero3", n, grad_accum=4).comm_bytes == 18e6
    assert plan(p, "ddp", 1).comm_bytes == 0


def test_time_and_efficiency_by_hand():
    p, n = 1_000_000, 4
    kw = dict(bandwidth_gbs=1.0, latency_us=0.0, compute_seconds=0.01)
    hidden = plan(p, "ddp", n, overlap=True, **kw)
    assert abs(hidden.comm_seconds - 3e-3) < 1e-12
    assert hidden.step_seconds == 0.01 and hidden.efficiency == 1.0  # 3 ms inside the 6.7 ms backward
    exposed = plan(p, "ddp", n, overlap=False, **kw)
    assert abs(exposed.step_seconds - 0.013) < 1e-12 and abs(exposed.efficiency - 0.01 / 0.013) < 1e-12
    slow = plan(p, "ddp", n, overlap=True, bandwidth_gbs=0.1, latency_us=0.0, compute_seconds=0.01)
    assert abs(slow.step_seconds - (0.01 + 0.03 - 0.01 * 2 / 3)) < 1e-12
    # latency: a 25 MB bucket each, 2 phases of N - 1 hops
    c = collectives_per_step(100_000_000, "ddp")[0]
    assert c.pieces == 8  # 200 MB of bf16 gradients in 25 MiB buckets
    assert abs(ring_time(c, 4, 1e9, 10.0) - 8 * 2 * 3 * 10e-6) < 1e-6


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="valid"):
        plan(10, "zero4", 2)
    with pytest.raises(ValueError, match="precision"):
        memory_per_gpu(10, "ddp", 2, "fp8")
    with pytest.raises(ValueError, match="world size"):
        memory_per_gpu(10, "ddp", 0)


def test_hirune_plan_command(capsys):
    import json

    from hirune.cli import main

    assert main(["plan", "ddpm-two-moons", "--gpus", "4", "--step-ms", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    p = out["measured"]["params"]
    ddp, zero3 = out["plans"][0], out["plans"][3]
    assert ddp["strategy"] == "ddp" and ddp["memory"]["weights"] == 2 * p and ddp["memory"]["optimizer"] == 12 * p
    assert zero3["memory"]["optimizer"] == 3 * p and zero3["comm_bytes"] == 1.5 * ddp["comm_bytes"]
    assert out["measured"]["micro_batch"] == 64 and out["measured"]["activation_bytes"] > 0
    assert main(["plan", "ddpm-two-moons", "--gpus", "2", "--step-ms", "5"]) == 0
    table = capsys.readouterr().out
    assert "| zero3 |" in table and "scaling efficiency" in table
    assert main(["plan", "ddpm-two-moons", "--gpus", "3"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_measured_activations_grow_with_the_batch():
    from hirune.training import Trainer, preset_config
    from hirune.training.measure import activation_bytes

    trainer = Trainer(preset_config("ddpm-digits", {"out": "unused"}), distributed=False)
    small, large = activation_bytes(trainer, 8), activation_bytes(trainer, 32)
    assert small > 0 and abs(large / small - 4) < 0.4


def test_measure_needs_a_gpu(capsys):
    from hirune.cli import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: test_estimate_within_15_percent_of_the_measured_peak runs instead")
    assert main(["plan", "ddpm-digits", "--gpus", "1", "--measure"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares against torch.cuda.max_memory_allocated")
@pytest.mark.parametrize("preset", ["vpred-mnist5k", "ddpm-digits"])
def test_estimate_within_15_percent_of_the_measured_peak(preset):
    from hirune.training import preset_config
    from hirune.training.measure import measure_peak_memory

    m = measure_peak_memory(preset_config(preset, {"out": "unused"}), 64)
    assert m["within_15_percent"], m
