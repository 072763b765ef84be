"""hirune.video_io: GIFs, MP4s and frame strips, read back.  GIF frames of grey videos come
back exactly (count, values, the grid layout); MP4 frames (H.264, lossy) come back in
number and close in value, and closer to their own frame than to any other; the strip puts
one video per row."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from hirune.video_io import frame_strip, to_frames, video_grid, write_gif, write_mp4


def moving_squares(b: int = 3, t: int = 9, c: int = 1, size: int = 32) -> torch.Tensor:
    """(b, c, t, size, size) in [-1, 1]: a bright 8 x 8 square moving right 2 px per frame,
    at a different row and brightness in each video (every frame differs from the others)."""
    x = torch.full((b, c, t, size, size), -1.0)
    for i in range(b):
        for k in range(t):
            x[i, :, k, 4 + 6 * i: 12 + 6 * i, 2 * k: 2 * k + 8] = 1.0 - 0.25 * i
    return x


def gif_frames(path) -> tuple[np.ndarray, list[int]]:
    with Image.open(path) as im:
        frames = [np.array(f.convert("L")) for f in ImageSequence.Iterator(im)]
        durations = [f.info.get("duration") for f in ImageSequence.Iterator(im)]
    return np.stack(frames), durations


def test_bad_videos_are_refused():
    for shape in ((9, 32, 32), (2, 2, 9, 8, 8), (1, 1, 0, 8, 8)):
        with pytest.raises(ValueError, match=r"videos must be \(B, C, T, H, W\) or \(C, T, H, W\) with C = 1 or 3"):
            to_frames(torch.zeros(shape))
    with pytest.raises(ValueError, match="fps=0 is not valid"):
        write_gif(moving_squares(1)[0], "x.gif", fps=0)


def test_gif_of_one_video_reads_back_exactly(tmp_path):
    video = moving_squares(1)[0]
    video[0, 3, 0, 0] = 0.0                                          # one mid-grey pixel: level 128
    frames, durations = gif_frames(write_gif(video, tmp_path / "one.gif", fps=8))
    expected = ((video[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert frames.shape == (9, 32, 32) and np.array_equal(frames, expected) and frames[3, 0, 0] == 128
    assert all(abs(d - 125) <= 10 for d in durations)
    # harness: the same comparison rejects the frames in the wrong order
    assert not np.array_equal(frames[::-1], expected)


def test_grid_gif_tiles_the_videos(tmp_path):
    videos = moving_squares(3)
    frames, _ = gif_frames(write_gif(videos, tmp_path / "grid.gif", nrow=2, pad=2))
    assert frames.shape == (9, 2 * 34 + 2, 2 * 34 + 2)
    expected = to_frames(videos)[..., 0].numpy()
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0)]):
        tile = frames[:, 2 + 34 * r: 2 + 34 * r + 32, 2 + 34 * c: 2 + 34 * c + 32]
        assert np.array_equal(tile, expected[i])
    assert (frames[:, 36:, 36:] == 64).all() and (frames[:, :2] == 64).all()   # the empty cell and the padding
    assert torch.equal(video_grid(videos, nrow=2)[..., 0], torch.from_numpy(frames))


def test_mp4_reads_back_close(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    video = moving_squares(1)[0]
    path = write_mp4(video, tmp_path / "one.mp4", fps=8, scale=4)
    frames = iio.imread(path, index=None, plugin="FFMPEG")
    assert frames.shape == (9, 128, 128, 3) and iio.immeta(path, plugin="FFMPEG")["fps"] == 8
    grey = torch.from_numpy(frames[..., 0].astype(np.float32))
    small = torch.nn.functional.avg_pool2d(grey[:, None], 4)[:, 0]                # back to 32 x 32
    expected = to_frames(video)[0, ..., 0].float()
    error = (small - expected).abs().mean((1, 2))
    assert error.max() < 3                                                       # of 255 levels
    # each decoded frame is nearest its own frame (a shifted or reordered file would not be)
    gaps = (small[:, None] - expected[None]).abs().mean((2, 3))
    assert torch.equal(gaps.argmin(1), torch.arange(9)) and gaps[0, 1] > 5 * error.max()


def test_mp4_of_a_grid_is_padded_to_macroblocks(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    videos = moving_squares(3)
    path = write_mp4(videos, tmp_path / "grid.mp4", nrow=3, scale=1)
    frames = torch.from_numpy(iio.imread(path, index=None, plugin="FFMPEG")[..., 0].astype(np.float32))
    assert frames.shape == (9, 48, 112)                                         # 36 x 104 padded up to 16s
    grid = video_grid(videos, nrow=3)[..., 0].float()
    assert grid.shape == (9, 36, 104) and (frames[:, :36, :104] - grid).abs().mean() < 3
    assert frames[:, 40:].mean() < 3                                            # the padding is black


def test_mp4_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ImportError, match=r"pip install 'hirune\[video\]'"):
        write_mp4(moving_squares(1)[0], tmp_path / "x.mp4")


def test_frame_strip_has_one_row_per_video(tmp_path):
    videos = moving_squares(3, t=5)
    strip = np.array(Image.open(frame_strip(videos, tmp_path / "strip.png", pad=1)))
    assert strip.shape == (3 * 33 + 1, 5 * 33 + 1)
    expected = to_frames(videos)[..., 0].numpy()
    for b in range(3):
        for t in range(5):
            assert np.array_equal(strip[1 + 33 * b: 33 * b + 33, 1 + 33 * t: 33 * t + 33], expected[b, t])
    rgb = np.array(Image.open(frame_strip(moving_squares(2, t=3, c=3)[0], tmp_path / "rgb.png", scale=2)))
    assert rgb.shape == (66 + 2, 3 * 66 + 2, 3)
