"""The video notes of issue 22's second part (`hirune.reproduce.video`: video-inversion, progressive,
cogvideo) at --budget tiny through the command, once each: the table, the JSON and the PNG, and what
a few training steps already fix -- exact inversion returns the clip where plain inversion drifts,
the progressive rows and their CPU-time arithmetic; the edit captions; and (slow) CogVideo's key
frames interpolated to 9 and 17 frames from one network trained two ways, and a 16 x 16 run's
network moved to 32 x 32 exactly as a progressive run starts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reproduced import run_at_tiny
from hirune.reproduce.video import NOTES
from hirune.reproduce.video import cogvideo, inversion, progressive

RUN_HERE = ["video-inversion", "progressive", "cogvideo"]
# cogvideo at tiny (five tiny trainings, autoregressive sampling: ~8 s) runs with the slow tests, as
# tests/families/test_cogvideo.py's chain does: the two others keep the default suite's share under 15 s
DEFAULT = ["video-inversion", "progressive"]


def test_these_are_video_notes():
    assert set(RUN_HERE) <= {name for name, *_ in NOTES}


def _at_tiny(names, root) -> dict:
    """Each note at --budget tiny through the command, once: {name: (report JSON, folder)}."""
    return {name: (report, folder) for name, (printed, report, folder) in run_at_tiny(names, root).items()}


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return _at_tiny(DEFAULT, tmp_path_factory.mktemp("video-reports-2"))


@pytest.fixture(scope="module")
def cogvideo_report(tmp_path_factory):
    return _at_tiny(["cogvideo"], tmp_path_factory.mktemp("cogvideo-report"))["cogvideo"]


def _check_table(report, folder, name):
    assert report["rows"] and all(len(r) == len(report["columns"]) for r in report["rows"])
    assert report["notes"] and (folder / f"{name}.png").stat().st_size > 0


@pytest.mark.parametrize("name", DEFAULT)
def test_the_note_writes_its_table_json_and_figure(name, reports):
    _check_table(*reports[name], name)


# --- video-inversion ----------------------------------------------------------------------------
def test_exact_inversion_returns_the_clip_where_plain_inversion_drifts(reports):
    report, folder = reports["video-inversion"]
    psnr = {(r[0], r[1]): r[2] for r in report["rows"] if r[2] != ""}
    scale = report["data"]["scale"]
    assert psnr[("exact (fixed point)", "scale 1")] > 60          # pixel space: the fixed point, to tolerance
    assert psnr[("plain", "scale 1")] < 40                         # plain inversion: one step behind
    assert {("plain", f"scale {scale:g}"), ("plain + reference attention", f"scale {scale:g}"),
            ("fresh noise + reference attention", f"scale {scale:g}"), (f"exact under guidance {scale:g}",
                                                                         f"scale {scale:g}")} <= set(psnr)
    schedule = [r for r in report["rows"] if r[0].startswith("shift-")]
    assert [r[0].split("schedule ")[1] for r in schedule] == ["with the shift", "WITHOUT the shift"]
    edits = [r for r in report["rows"] if "edit" in r[1]]
    assert len(edits) == 8 and all(0 <= r[4] <= 1 and 0 <= r[5] <= 1 for r in edits)
    assert (folder / "video-inversion.gif").read_bytes()[:6] == b"GIF89a"


def test_edit_captions_change_one_thing():
    attrs = {"label": torch.tensor([3, 8]), "direction": torch.tensor([0, 2]), "speed": torch.tensor([1, 2]),
             "bounced": torch.tensor([0, 1]), "thickness": torch.tensor([1, 1])}
    same, labels, dirs = inversion.captions(attrs, 2)
    digit, digit_labels, digit_dirs = inversion.captions(attrs, 2, label_shift=5)
    motion, motion_labels, motion_dirs = inversion.captions(attrs, 2, reverse=True)
    assert labels == [3, 8] and dirs == [0, 2] and digit_labels == [8, 3] and digit_dirs == dirs
    assert motion_labels == labels and motion_dirs == [1, 3]
    assert "left" in same[0] and "right" in motion[0] and "up" in same[1] and "down" in motion[1]
    assert same[0].replace("three", "eight") == digit[0] and same[0].replace("left", "right") == motion[0]


# --- progressive --------------------------------------------------------------------------------
def test_progressive_rows_and_equal_cpu_time(reports):
    report, folder = reports["progressive"]
    data = report["data"]
    low, high = data["low_steps"], data["high_steps"]
    assert data["equal_steps"] == high + round(low * progressive.STEP_COST_16) > high
    steps = {r[0]: r[1] for r in report["rows"]}
    assert steps["low (16 x 16)"] == f"{low} / 0" and steps["progressive, interpolate"] == f"{low} / {high}"
    assert steps["scratch at 32 x 32"] == f"0 / {high}"
    assert steps["scratch at 32 x 32, the CPU time of progressive"] == f"0 / {data['equal_steps']}"
    losses = {name: r["fixed_draw_loss"] for name, r in data["results"].items()}
    assert len(losses) == 7 and all(math.isfinite(v) and v > 0 for v in losses.values())
    assert 0.5 < data["zero_prediction_loss"] < 1.5                   # E|v|^2 of unit-variance data and noise
    assert data["zero_prediction_loss"] != losses["scratch at 32 x 32"]  # the network as built, not the trained one
    real = {r[0]: r for r in report["rows"] if r[0].startswith("real")}
    assert [r[5] for r in real.values()] == [1.0, 1.0]                # real clips move the way they are captioned
    assert len(list(folder.glob("progressive_*.gif"))) == 7


@pytest.mark.slow
def test_a_low_network_moves_to_32_as_a_progressive_run_starts(tmp_path):
    from hirune.training import load
    from hirune.training.loop import train
    from hirune.training.presets import preset_config
    from hirune.training.trainer import Trainer

    tiny = {"autoencoder": "", "steps": 2, "batch_size": 4, "ckpt_every": 2, "sample_every": 0, "log_every": 1}
    low = tmp_path / "low"
    train(preset_config(progressive.LOW, {**tiny, "out": str(low), "model_config": progressive.TINY_NET}),
          progress=False)
    net = load(low).model
    with torch.no_grad():  # weights off adaLN-Zero's start, so the positions show in the output
        state = {k: v + 0.2 * torch.randn_like(v) for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    family = Trainer(preset_config(progressive.PROGRESSIVE, {**tiny, "out": str(tmp_path / "up"),
                                                             "base": str(low)})).family
    family.model.load_state_dict(state)
    started = progressive.fixed_draw_loss(family, n=16)
    moved = {s: progressive.moved(net, s, 32) for s in progressive.SCALINGS}
    assert moved["interpolate"].config.rope_base == (9, 4, 4) and moved["extrapolate"].config.rope_base is None
    metrics, clips = progressive.score(family, moved["extrapolate"], 2, 2, 1.0, 16, frechet=True)
    assert metrics["fixed_draw_loss"] == started                       # extrapolate: the progressive run's start
    assert clips.shape == (2, 1, 9, 32, 32) and math.isfinite(metrics["frechet_distance_frames"])
    interpolated, _ = progressive.score(family, moved["interpolate"], 2, 2, 1.0, 16, frechet=False)
    assert abs(interpolated["fixed_draw_loss"] - started) > 1e-4     # the positions matter to it


# --- cogvideo -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_cogvideo_key_frames_are_interpolated_to_9_and_17_frames(cogvideo_report):
    report, folder = cogvideo_report
    _check_table(report, folder, "cogvideo")
    data = report["data"]
    frames = {key: r["frames"] for key, r in data["results"].items()}
    assert frames == {f"{v}/{label}": f for v in cogvideo.VARIANTS for (label, _, _), f in
                      zip(cogvideo.SCHEDULES, (5, 9, 17))}
    assert data["parameters"]["image"] == data["parameters"]["scratch"]   # from scratch: the same network
    for r in data["results"].values():
        assert all(0.0 <= r[k] <= 1.0 for k in ("frame_accuracy", "direction_accuracy", "temporal_consistency"))
    assert [row[0] for row in report["rows"]] == [f"from {w}: {label}" for w in ("the image model", "scratch")
                                                  for label, _, _ in cogvideo.SCHEDULES]   # tiny: no real rows
    assert all((folder / f"cogvideo_{v}_17.gif").read_bytes()[:6] == b"GIF89a" for v in cogvideo.VARIANTS)


def test_measured_reads_the_named_digit_and_motion():
    from hirune.data.moving import moving_digits

    clips = moving_digits("test", frames=9)
    pick = torch.tensor([0, 1, 250, 499])
    x, labels, dirs = clips.data[pick], clips.labels[pick], clips.attributes["direction"][pick]
    right = progressive.measured(x, labels, dirs, frechet=False)
    wrong = progressive.measured(x, (labels + 5) % 10, (dirs + 1) % 4, frechet=False)
    assert right["direction_accuracy"] == 1.0 and wrong["direction_accuracy"] < 1.0
    assert right["frame_accuracy"] > wrong["frame_accuracy"]
    assert json.dumps(right)                                           # plain numbers, for the report's JSON
