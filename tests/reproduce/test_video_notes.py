"""The video notes (`hirune.reproduce.video`) at --budget tiny through the command, once each: the
table, the JSON and the PNG, and what a few training steps already fix (latent shapes, the
numbers a clip, PSNR bookkeeping); the video VAE's frame helpers on hand-made clips."""

from __future__ import annotations

import json
import math

import pytest
import torch

from reproduced import run_at_tiny
from hirune.data import ArrayDataset
from hirune.data.registry import DATASETS
from hirune.reproduce.video import NOTES
from hirune.reproduce.video import cogvideox, vae

RUN_HERE = ["video-vae", "cogvideox"]


def test_these_are_the_video_notes():
    assert RUN_HERE == [name for name, *_ in NOTES][:2]  # the others: test_video_notes2.py


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Every video note at --budget tiny through the command, once: {name: (printed output, folder)}."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("video-reports"))
    return {name: (printed, folder) for name, (printed, _, folder) in notes.items()}


def _report(reports, name) -> dict:
    return json.loads((reports[name][1] / f"{name}.json").read_text())


@pytest.mark.parametrize("name", RUN_HERE)
def test_the_note_writes_its_table_json_and_figure(name, reports):
    printed, folder = reports[name]
    report = _report(reports, name)
    assert report["title"] in printed and report["rows"] and all(len(r) == len(report["columns"])
                                                                  for r in report["rows"])
    assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f'src="{name}.png"' in (folder / "index.html").read_text()


def test_video_vae_latents_and_psnr_bookkeeping(reports):
    data = _report(reports, "video-vae")["data"]
    video, *images = data["results"]
    assert video["latent"] == [4, 3, 8, 8] and video["numbers"] == 768       # 9 frames -> 1 + 8 / 4, 32 / 4
    assert [(r["latent"], r["numbers"]) for r in images] == [([9, 1, 8, 8], 576), ([9, 4, 8, 8], 2304)]
    for r in data["results"]:
        frames, clip = r["psnr"][:9], r["psnr"][9]
        assert len(r["psnr"]) == 10 and min(frames) <= clip <= max(frames)  # the clip's MSE is the frames' mean
        assert r["params"] > 0 and r["minutes"] > 0
    assert vae.FRAMES_SET not in DATASETS                  # the frames set is registered only while training


def test_frames_of_clips_keep_their_order_and_labels():
    data = torch.arange(2 * 3 * 4.0).reshape(2, 1, 3, 2, 2)
    clips = ArrayDataset(name="c", kind="video", data=data, labels=torch.tensor([7, 8]), num_classes=10,
                         split="train", source="here")
    frames = vae.frames_of(clips)
    assert frames.kind == "image" and frames.data.shape == (6, 1, 2, 2)
    assert torch.equal(frames.data[4], data[1, :, 1]) and frames.labels.tolist() == [7, 7, 7, 8, 8, 8]


def test_per_frame_psnr_reads_each_frame_index_and_the_clip():
    clips = torch.zeros(3, 1, 2, 4, 4)
    noisy = lambda c: c + torch.stack([torch.full_like(c[:, :, 0], 0.1), torch.full_like(c[:, :, 0], 0.2)], 2)
    f0, f1, clip = vae.per_frame_psnr(noisy, clips, batch=2)
    assert math.isclose(f0, 10 * math.log10(4 / 0.01), rel_tol=1e-6)
    assert math.isclose(f1, 10 * math.log10(4 / 0.04), rel_tol=1e-6)
    assert math.isclose(clip, 10 * math.log10(4 / 0.025), rel_tol=1e-6)


def test_cogvideox_ablations_share_the_network_and_log_every_step(reports):
    report = _report(reports, "cogvideox")
    data, folder = report["data"], reports["cogvideox"][1]
    ours, iid = data["results"]["cogvideox"], data["results"]["iid"]
    assert ours["parameters"] == iid["parameters"]                  # i.i.d. times change the draw, not the network
    assert len(data["losses"]["cogvideox"]) == data["steps"] == len(data["losses"]["iid"])
    assert data["losses"]["cogvideox"][0] != data["losses"]["iid"][0]   # other times from the first batch
    for r in (ours, iid):
        assert all(0.0 <= r[k] <= 1.0 for k in ("frame_accuracy", "direction_accuracy", "temporal_consistency"))
    assert [row[0] for row in report["rows"]] == ["cogvideox", "iid", "real test clips"]
    assert report["rows"][-1][4] == 1.0                              # real clips move the way their caption says
    assert all((folder / f"cogvideox_{name}.gif").read_bytes()[:6] == b"GIF89a" for name in ("cogvideox", "iid"))


def _metrics(tmp_path, losses):
    lines = [json.dumps({"step": i + 1, "loss": float(v)}) for i, v in enumerate(losses)]
    (tmp_path / "metrics.jsonl").write_text("\n".join([json.dumps({"step": 0, "eval": 1})] + lines) + "\n")
    return tmp_path


def test_loss_spread_is_the_noise_around_the_trend(tmp_path):
    torch.manual_seed(0)
    steps = torch.arange(2000, dtype=torch.float64)
    trend = 1.0 / (1 + steps / 200)
    noisy = trend + 0.02 * torch.randn(2000, dtype=torch.float64)
    spread = cogvideox.loss_spread(_metrics(tmp_path, noisy))
    assert abs(spread / 0.02 - 1) < 0.1  # the moving average leaves sqrt(1 - 1/25) of the noise
    assert cogvideox.loss_spread(_metrics(tmp_path, trend)) < 1e-4  # the trend alone: no spread
