"""benchmarks/video_vae.py: the frames of clips as an image set (frame t of clip i is row i T + t,
labels repeated) and the PSNR per frame index (the clip mean last), on hand-made clips."""

from __future__ import annotations

import math

import torch

from benchmark_scripts import load_benchmark
from hirune.data import ArrayDataset

bench = load_benchmark("video_vae", "video_vae_bench")


def test_frames_of_clips_keep_their_order_and_labels():
    data = torch.arange(2 * 3 * 4.0).reshape(2, 1, 3, 2, 2)
    clips = ArrayDataset(name="c", kind="video", data=data, labels=torch.tensor([7, 8]), num_classes=10,
                         split="train", source="here")
    frames = bench.frames_of(clips)
    assert frames.kind == "image" and frames.data.shape == (6, 1, 2, 2)
    assert torch.equal(frames.data[4], data[1, :, 1]) and frames.labels.tolist() == [7, 7, 7, 8, 8, 8]


def test_per_frame_psnr_reads_each_frame_index_and_the_clip():
    clips = torch.zeros(3, 1, 2, 4, 4)
    noisy = lambda c: c + torch.stack([torch.full_like(c[:, :, 0], 0.1), torch.full_like(c[:, :, 0], 0.2)], 2)
    f0, f1, clip = bench.per_frame_psnr(noisy, clips, batch=2)
    assert math.isclose(f0, 10 * math.log10(4 / 0.01), rel_tol=1e-6)
    assert math.isclose(f1, 10 * math.log10(4 / 0.04), rel_tol=1e-6)
    assert math.isclose(clip, 10 * math.log10(4 / 0.025), rel_tol=1e-6)
