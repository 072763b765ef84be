"""Video files: animated GIFs (Pillow), MP4s (H.264 through imageio-ffmpeg's ffmpeg binary)
and PNG frame strips of video tensors.

Videos are (B, C, T, H, W) or one video (C, T, H, W), values in [-1, 1], C = 1 (grey) or 3
(RGB), as `ArrayDataset.data` holds them (kind "video").  Several videos are tiled side by
side on a grid (`nrow` per row, `pad` px of `pad_value` between and around them); `scale`
enlarges every pixel to a scale x scale block (the 32 x 32 digits are tiny on screen).

    write_gif(videos, "clips.gif", fps=8)          # one video, or a grid of several
    write_mp4(videos, "clips.mp4", fps=8)          # needs: pip install 'hirune[video]'
    frame_strip(videos, "clips.png")               # one row per video, frames left to right

A GIF stores grey frames exactly (a 256-entry grey palette); RGB frames go through an
adaptive palette.  Pillow merges consecutive identical frames into one (their durations
added), so a GIF of a clip with repeated frames plays for the same time with fewer frames.
An MP4 is lossy (H.264, `quality` 0..10 -> crf 51..0); its frames are padded at the bottom
and right to a multiple of 16 px (the codec's macroblock), never rescaled.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

VIDEO_HINT = "pip install 'hirune[video]' (imageio and imageio-ffmpeg)"
MACROBLOCK = 16


def to_frames(videos: Tensor) -> Tensor:
    """(B, C, T, H, W) or (C, T, H, W) in [-1, 1] -> (B, T, H, W, C) uint8 (round((x + 1) 127.5))."""
    x = torch.as_tensor(videos).detach().float().cpu()
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5 or x.shape[1] not in (1, 3) or 0 in x.shape:
        raise ValueError(f"videos must be (B, C, T, H, W) or (C, T, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


def tile(frames: Tensor, nrow: int, pad: int = 2, pad_value: int = 64, scale: int = 1) -> Tensor:
    """(N, H, W, C) uint8 frames -> one (rows (H s + pad) + pad, nrow (W s + pad) + pad, C) picture,
    frame i in row i // nrow, column i % nrow, each pixel a scale x scale block (s = scale)."""
    if scale < 1 or pad < 0 or nrow < 1:
        raise ValueError(f"scale={scale}, pad={pad}, nrow={nrow} are not valid; valid: scale >= 1, pad >= 0, nrow >= 1")
    frames = frames.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    n, h, w, c = frames.shape
    rows = math.ceil(n / nrow)
    out = torch.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = frames[i]
    return out


def video_grid(videos: Tensor, nrow: int | None = None, pad: int = 2, pad_value: int = 64, scale: int = 1) -> Tensor:
    """The frames of a grid of videos, (T, H', W', C) uint8: at each time the B videos' frames
    tiled `nrow` per row (default: about square).  One video: its frames, scaled, unpadded."""
    x = to_frames(videos)
    b, t = x.shape[:2]
    if b == 1:
        return torch.stack([tile(x[0, i: i + 1], 1, 0, pad_value, scale) for i in range(t)])
    nrow = nrow or math.ceil(math.sqrt(b))
    return torch.stack([tile(x[:, i], nrow, pad, pad_value, scale) for i in range(t)])


def _save_path(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_gif(videos: Tensor, path: str | Path, fps: float = 8, nrow: int | None = None, pad: int = 2,
              scale: int = 1, loop: int = 0) -> Path:
    """An animated GIF of one video (C, T, H, W) or of a grid of videos (B, C, T, H, W) in
    [-1, 1] playing together (`video_grid`), at `fps` frames per second (GIF timing is in
    units of 10 ms), looping forever (loop=0) or `loop` times."""
    from PIL import Image

    if not fps > 0:
        raise ValueError(f"fps={fps!r} is not valid; valid: a number > 0")
    frames = video_grid(videos, nrow, pad, scale=scale)
    grey = frames.shape[-1] == 1
    images = [Image.fromarray(f[..., 0].numpy(), "L") if grey else
              Image.fromarray(f.numpy(), "RGB").convert("P", palette=Image.Palette.ADAPTIVE) for f in frames]
    path = _save_path(path)
    images[0].save(path, save_all=True, append_images=images[1:], duration=1000 / fps, loop=loop)
    return path


def write_mp4(videos: Tensor, path: str | Path, fps: float = 8, nrow: int | None = None, pad: int = 2,
              scale: int = 4, quality: float = 8) -> Path:
    """An H.264 MP4 (yuv420p, playable everywhere) of one video or a grid of videos, through
    the ffmpeg binary that imageio-ffmpeg ships; frames padded to a multiple of 16 px."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise ImportError(f"writing MP4 needs imageio-ffmpeg: {VIDEO_HINT}") from None
    if not fps > 0:
        raise ValueError(f"fps={fps!r} is not valid; valid: a number > 0")
    if not 0 <= quality <= 10:
        raise ValueError(f"quality={quality!r} is not valid; valid: 0..10 (10: best)")
    frames = video_grid(videos, nrow, pad, scale=scale)
    t, h, w, c = frames.shape
    H, W = -(-h // MACROBLOCK) * MACROBLOCK, -(-w // MACROBLOCK) * MACROBLOCK
    canvas = torch.zeros(t, H, W, 3, dtype=torch.uint8)
    canvas[:, :h, :w] = frames.expand(-1, -1, -1, 3)
    path = _save_path(path)
    writer = imageio_ffmpeg.write_frames(str(path), (W, H), fps=fps, codec="libx264", quality=quality,
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    try:
        for frame in canvas:
            writer.send(frame.contiguous().numpy().tobytes())
    finally:
        writer.close()
    return path


def frame_strip(videos: Tensor, path: str | Path, pad: int = 2, scale: int = 1, pad_value: int = 64) -> Path:
    """A PNG of videos (B, C, T, H, W) or (C, T, H, W): one row per video, its frames left to right."""
    from PIL import Image

    x = to_frames(videos)
    b, t = x.shape[:2]
    picture = tile(x.reshape(b * t, *x.shape[2:]), t, pad, pad_value, scale)
    array = picture[..., 0].numpy() if picture.shape[-1] == 1 else picture.numpy()
    path = _save_path(path)
    Image.fromarray(array).save(path)
    return path
