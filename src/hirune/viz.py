"""Pictures: of 2-D point clouds (a grid of scatter plots, a GIF of a sampler trajectory) and
of images (a PNG grid, a GIF of the grids along a sampler trajectory).

matplotlib (Agg backend, no display needed) and Pillow are imported inside the functions,
so importing hirune stays light.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from .video_io import tile


def _points(x: Tensor, max_points: int | None = None) -> Tensor:
    """x as a (N, 2) float64 CPU tensor, keeping at most `max_points` (the first ones)."""
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"need a (N, 2) point cloud, got shape {tuple(x.shape)}")
    return x if max_points is None else x[:max_points]


def _limits(clouds: list[Tensor], pad: float = 0.1) -> tuple[float, float, float, float]:
    """Shared axis limits: the central 99.5% of all points (outliers ignored), padded."""
    pts = torch.cat([c[torch.isfinite(c).all(1)] for c in clouds])
    if len(pts) == 0:
        return -1.0, 1.0, -1.0, 1.0
    lo, hi = torch.quantile(pts, 0.0025, dim=0), torch.quantile(pts, 0.9975, dim=0)
    span = (hi - lo).clamp(min=1e-6)
    lo, hi = lo - pad * span, hi + pad * span
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def scatter_grid(panels: list[tuple[str, Tensor]], path: str | Path, truth: Tensor | None = None,
                 *, ncols: int | None = None, max_points: int = 4000, suptitle: str | None = None,
                 size: float = 3.2) -> Path:
    """Write a PNG with one scatter plot per (title, (N, 2) points) panel, all on the same
    axis limits; `truth` (N, 2), if given, is drawn faintly behind every panel."""
    if not panels:
        raise ValueError("need at least one panel")
    plt = _pyplot()
    clouds = [_points(x, max_points) for _, x in panels]
    ref = None if truth is None else _points(truth, max_points)
    x0, x1, y0, y1 = _limits([ref] if ref is not None else clouds)
    ncols = ncols or min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.4),
                             squeeze=False, sharex=True, sharey=True)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, _), pts in zip(axes.flat, panels, clouds):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", alpha=0.5, linewidths=0)
        ax.scatter(pts[:, 0], pts[:, 1], s=2, c="tab:blue", alpha=0.6, linewidths=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_aspect("equal", adjustable="box")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trajectory_gif(trajectory: list[Tensor], path: str | Path, *, labels: list[str] | None = None,
                   truth: Tensor | None = None, title: str = "", max_points: int = 1500,
                   max_frames: int = 60, frame_ms: int = 80, hold_ms: int = 1500,
                   size: float = 4.0) -> Path:
    """Write an animated GIF of a (N, 2) point cloud moving along `trajectory` (the states
    a sampler visited, noise first).  At most `max_frames` evenly chosen frames (first and
    last always kept); the last frame is held for `hold_ms`.  The axes fit the final cloud
    (and `truth`, drawn faintly), so very wide initial noise may start off-screen.
    `labels` (one per state, e.g. its time) are shown in the title."""
    if len(trajectory) == 0:
        raise ValueError("empty trajectory")
    if labels is not None and len(labels) != len(trajectory):
        raise ValueError(f"{len(labels)} labels for {len(trajectory)} states")
    from PIL import Image

    plt = _pyplot()
    n = len(trajectory)
    m = max(1, min(n, max_frames))
    keep = sorted({round(i * (n - 1) / max(1, m - 1)) for i in range(m)})
    frames_pts = [_points(trajectory[i], max_points) for i in keep]
    ref = None if truth is None else _points(truth, max_points)
    x0, x1, y0, y1 = _limits([frames_pts[-1]] + ([ref] if ref is not None else []), pad=0.25)
    fig, ax = plt.subplots(figsize=(size, size))
    if ref is not None:
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.8", alpha=0.5, linewidths=0)
    dots = ax.scatter(frames_pts[0][:, 0], frames_pts[0][:, 1], s=3, c="tab:blue", alpha=0.7,
                      linewidths=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal", adjustable="box")
    label = ax.set_title(title, fontsize=9)
    fig.tight_layout()
    images = []
    for i, pts in zip(keep, frames_pts):
        dots.set_offsets(pts.numpy())
        extra = "" if labels is None else f"  {labels[i]}"
        label.set_text(f"{title}  state {i}/{n - 1}{extra}".strip())
        fig.canvas.draw()
        rgba = Image.frombuffer("RGBA", fig.canvas.get_width_height(),
                                bytes(fig.canvas.buffer_rgba()), "raw", "RGBA", 0, 1)
        images.append(rgba.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE))
    plt.close(fig)
    path = Path(path)
    durations = [frame_ms] * (len(images) - 1) + [hold_ms]
    images[0].save(path, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return path


def grid_picture(images: Tensor, nrow: int | None = None, pad: int = 2):
    """(N, C, H, W) images in [-1, 1] (C = 1 or 3) as one PIL image, a grid of `nrow` per row
    (default: a square), `pad` black pixels between them."""
    from PIL import Image

    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c = x.shape[:2]
    grid = tile(x.permute(0, 2, 3, 1), nrow or max(1, int(math.ceil(math.sqrt(n)))), pad, pad_value=0)
    return Image.fromarray(grid[..., 0].numpy() if c == 1 else grid.numpy())


def image_grid(images: Tensor, path: str | Path, nrow: int | None = None, pad: int = 2) -> Path:
    """Write (N, C, H, W) images in [-1, 1] (C = 1 or 3) as one PNG grid, `nrow` per row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_picture(images, nrow, pad).save(path)
    return path


def grid_gif(trajectory: list[Tensor], path: str | Path, *, max_frames: int = 30, frame_ms: int = 80) -> Path:
    """Write a sampler's image trajectory (the (N, C, H, W) states, noise first, the samples
    last) as an animated GIF of their grids: every k-th state, k = len // max_frames, and the
    last state always."""
    if len(trajectory) == 0:
        raise ValueError("empty trajectory")
    states = trajectory[:-1][:: max(1, len(trajectory[:-1]) // max_frames)] + [trajectory[-1]]
    pictures = [grid_picture(x).convert("P") for x in states]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
    return path


def tradeoff_plot(curves: dict[str, list[dict]], path: str | Path, *, x: str = "class_accuracy",
                  y: str = "frechet_distance", label: str = "scale", reference: float | None = None,
                  title: str = "") -> Path:
    """One line per method through its points (dicts with keys x, y, label), each point
    annotated with its label (e.g. the guidance scale); `reference`: a horizontal line
    (e.g. the real-vs-real Frechet distance)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    for name, points in curves.items():
        xs, ys = [p[x] for p in points], [p[y] for p in points]
        ax.plot(xs, ys, "o-", label=name)
        for p in points:
            ax.annotate(f"{p[label]:g}", (p[x], p[y]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", lw=1, label="real vs real")
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
