"""What a run writes about itself: metrics.jsonl always, loss.png without any extra, and with
logger=tensorboard event files that tensorboard's own reader reads back (scalars, the preview
grid, the gradient-norm histogram); a resumed run purges the steps past its checkpoint."""

from __future__ import annotations

import json

import pytest

from hirune.training import preset_config, train

BASE = {"steps": 6, "batch_size": 16, "log_every": 1, "ckpt_every": 3, "sample_every": 3, "num_samples": 4,
        "sample_steps": 2, "model_config": {"hidden": 16, "depth": 1}}


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_every_run_draws_its_loss_curve(tmp_path):
    out = tmp_path / "run"
    train(preset_config("ddpm-two-moons", {**BASE, "out": str(out)}), progress=False)
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not (out / "tensorboard").exists()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))


def test_tensorboard_holds_the_scalars_previews_and_gradient_histograms(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    run = train(preset_config("ddpm-two-moons", {**BASE, "logger": "tensorboard", "out": str(out)}), progress=False)
    acc = _events(out / "tensorboard")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "lr", "grad_norm"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [r["step"] for r in logged]
        assert [e.value for e in events] == pytest.approx([r[key] for r in logged], rel=1e-6)
    assert [e.step for e in acc.Images("samples")] == [3, 6]
    histograms = acc.Histograms("gradients/norm_per_tensor")
    assert [h.step for h in histograms] == list(range(1, 7))
    # one norm per parameter tensor, after clipping: their squares sum to the clipped global norm's square
    assert all(h.histogram_value.num == len(list(run.model.parameters())) for h in histograms)
    clip = run.cfg.grad_clip
    assert [h.histogram_value.sum_squares for h in histograms] == pytest.approx(
        [min(r["grad_norm"], clip) ** 2 for r in logged], rel=1e-4)


def test_a_resumed_run_purges_the_steps_past_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    cfg = {**BASE, "logger": "tensorboard", "sample_every": 0, "out": str(out)}
    train(preset_config("ddpm-two-moons", {**cfg, "ckpt_every": 4}), stop_after=5, progress=False)  # step 5 lost
    train(preset_config("ddpm-two-moons", {**cfg, "ckpt_every": 4, "resume": True}), progress=False)
    steps = [e.step for e in _events(out / "tensorboard").Scalars("train/loss")]
    assert steps == list(range(1, 7)), steps


def test_bad_logger_names_the_valid_ones(tmp_path):
    from hirune.training.config import check_config

    with pytest.raises(ValueError, match=r"logger='wandb' is not valid; valid: \['jsonl', 'tensorboard'\]"):
        check_config(preset_config("ddpm-two-moons", {"logger": "wandb", "out": str(tmp_path / "r")}))
