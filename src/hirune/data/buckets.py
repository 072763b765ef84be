"""Aspect-ratio buckets of images (SDXL, Podell et al. 2023 sec. 2.3 "multi-aspect training",
after NovelAI): images of several shapes (H, W) of about the same pixel count, each image on
the canvas of the bucket its content's aspect ratio fits best.

`mnist5k-aspect` (`data.images.mnist5k_aspect`) is made here from mnist5k: each digit's ink
box (the rows and columns holding a pixel above the background -1) is cut out, its aspect
h / w matched to the bucket (H, W) nearest in log H / W among those it fits in, and centred
on that bucket's canvas (background -1; pixels are copied, never rescaled, so the 256
levels stay exact).  Tall narrow digits (most ones and nines) land on the tall canvas, the
rare wide ones (flat twos and fives) on the wide one, the rest on the square one.

Storage: one array (N, C, Hc, Wc) of the smallest canvas every bucket fits in (for
ASPECT_BUCKETS 32 x 32), each example's bucket centred in it, plus each example's bucket
index (`ArrayDataset.bucket`, (N,) int64) and the buckets' shapes (`ArrayDataset.buckets`,
`DataFormat.buckets`).  Why one padded array: everything that takes a dataset (the loop's
device copy and indexing, the captioner's ink measures, `DataFormat.shape` and the memory
checks, a classifier or autoencoder trained on the canvas) keeps its one (N, C, H, W) tensor;
a batch of one bucket is a single slice of it (`recentre`); the cost is the padding, 32 x 32
against about 28 x 28 (1.3x).  The padded examples are themselves proper images (the
digit centred on a 32 x 32 background), so a run without buckets on the same data trains on
the padded canvas, NovelAI's baseline.

`recentre(x, (H, W))` crops or pads a batch about its centre: it cuts a bucket out of the
canvas, puts it back, and brings any bucket's images to the shipped evaluator's 28 x 28.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# (H, W) of about 28 x 28 = 784 pixels (784, 768, 768), sides divisible by 4 (the tiny UNet's
# two downsamplings: 28 -> 14 -> 7, 32 -> 16 -> 8, 24 -> 12 -> 6); the first is the default
# shape of sampling.  MNIST's ink boxes are at most 20 x 20, so every digit fits every bucket.
ASPECT_BUCKETS: tuple[tuple[int, int], ...] = ((28, 28), (32, 24), (24, 32))
BACKGROUND = -1.0


def canvas_shape(buckets) -> tuple[int, int]:
    """(Hc, Wc): the smallest canvas every bucket (H, W) fits in."""
    return max(h for h, _ in buckets), max(w for _, w in buckets)


def recentre(x: Tensor, size: tuple[int, int], fill: float = BACKGROUND) -> Tensor:
    """x (..., h, w) cropped or padded (with `fill`) about its centre to (..., H, W): the
    first (h - H) // 2 rows are cut (or (H - h) // 2 added) at the top, likewise the
    columns at the left, so a crop and the pad back are each other's inverse."""
    h, w = x.shape[-2:]
    H, W = size
    top, left = (h - H) // 2, (w - W) // 2
    if top > 0 or left > 0:  # crop where the source is larger
        x = x[..., max(top, 0): max(top, 0) + min(h, H), max(left, 0): max(left, 0) + min(w, W)]
    if top < 0 or left < 0:  # pad where it is smaller: (left, right, top, bottom)
        ph, pw = max(H - h, 0), max(W - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
    return x


def ink_boxes(images: Tensor, background: float = BACKGROUND) -> Tensor:
    """(N, 4) int64 (top, left, height, width) of each image's ink: the rows and columns of
    (N, C, H, W) holding a value above `background`; (0, 0, H, W) for a blank image."""
    ink = (images > background).any(1)                       # (N, H, W)
    boxes = []
    for rows_cols in (ink.any(2), ink.any(1)):                # (N, H), (N, W)
        n, size = rows_cols.shape
        pos = torch.arange(size).expand(n, size)
        first = torch.where(rows_cols, pos, size).min(1).values
        last = torch.where(rows_cols, pos, -1).max(1).values
        blank = last < 0
        boxes += [torch.where(blank, 0, first), torch.where(blank, size, last - first + 1)]
    top, height, left, width = boxes
    return torch.stack([top, left, height, width], 1)


def best_buckets(heights: Tensor, widths: Tensor, buckets) -> Tensor:
    """(N,) int64: for each ink box (h, w) the bucket (H, W) whose log aspect log(H / W) is
    nearest log(h / w), among the buckets it fits in (h <= H, w <= W); ties go to the earlier
    bucket.  A box that fits none is refused."""
    shape = torch.tensor(buckets, dtype=torch.float64)                          # (K, 2)
    gap = ((heights.double() / widths.double()).log()[:, None] - (shape[:, 0] / shape[:, 1]).log()).abs()
    fits = (heights[:, None] <= shape[:, 0]) & (widths[:, None] <= shape[:, 1])
    if not fits.any(1).all():
        i = int((~fits.any(1)).nonzero()[0])
        raise ValueError(f"an image's ink of {int(heights[i])} x {int(widths[i])} fits none of the buckets "
                         f"{format_sizes(buckets)}")
    return torch.where(fits, gap, math.inf).argmin(1)


def bucket_images(images: Tensor, buckets) -> tuple[Tensor, Tensor]:
    """Each image's ink centred on the canvas of its best bucket (`best_buckets`), that
    canvas centred in the common canvas (`canvas_shape`): returns (N, C, Hc, Wc) images,
    background -1 around the ink, and (N,) int64 bucket indices."""
    boxes = ink_boxes(images)
    bucket = best_buckets(boxes[:, 2], boxes[:, 3], buckets)
    hc, wc = canvas_shape(buckets)
    out = torch.full((len(images), images.shape[1], hc, wc), BACKGROUND, dtype=images.dtype)
    for i, ((top, left, h, w), b) in enumerate(zip(boxes.tolist(), bucket.tolist())):
        H, W = buckets[b]
        row, col = (hc - H) // 2 + (H - h) // 2, (wc - W) // 2 + (W - w) // 2
        out[i, :, row: row + h, col: col + w] = images[i, :, top: top + h, left: left + w]
    return out, bucket


def format_sizes(sizes) -> str:
    """'28x28, 32x24, 24x32' (H x W)."""
    return ", ".join(f"{h}x{w}" for h, w in sizes)
