"""Aspect-ratio buckets in training and sampling (SDXL, Podell et al. 2023 sec. 2.3,
"multi-aspect training", after NovelAI): a diffusion run with `buckets=true` on a dataset of
buckets (`data.buckets`, e.g. `mnist5k-aspect`) trains on every bucket's shape, a whole
global batch from one bucket at a time (so it stacks), and samples at any bucket's shape.

The draw (`draw`, last in the family's draw, from the run's noise generator, for the whole
global batch, so every rank agrees and keeps its slice; a pure function of (seed, step)):

    one training example j ~ U{0 .. N - 1};  b = bucket(j)     so P(b) = N_b / N
    rows i_1 .. i_n ~ U(members of b), with replacement

Drawing an example and taking its bucket gives every bucket exactly its share of the data
(SDXL draws the bucket "in proportion to its size").  The loop's own data order is not
used (as in DreamBooth).  The noise of the draw has the canvas' shape and is cut with the
images (`batch`): a centred crop of i.i.d. normal noise is i.i.d. normal noise.

Sampling takes a `size` (H, W) among the run's buckets (default: the first, 28 x 28 for
mnist5k-aspect); other shapes are refused, naming the valid ones -- the UNet, fully
convolutional, would run at any shape, but the run never learned one outside its buckets.
`batch_shape(run, draw)` is the bucket (H, W) of a training batch, `sample_shape(run, size)`
the shape of a sampling batch: SDXL's target size, for micro-conditioning to read.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..data.buckets import format_sizes, recentre
from . import micro
from .base import Batch

# the diffusion settings buckets are not combined with (each reads images of one shape)
EXCLUSIVE = ("autoencoder", "low_res", "clip", "reflow_from", "base", "placeholder", "instance")


def active(config) -> bool:
    return bool(getattr(config, "buckets", False))


def check(cfg, config) -> None:
    """buckets=true needs a dataset of buckets, a UNet (fully convolutional; the transformers
    hold a position table of one size, the MLP one input width) and none of EXCLUSIVE."""
    if not active(config):
        return
    from ..data import DATASETS, dataset_buckets

    if not dataset_buckets(cfg.dataset):
        valid = [name for name, spec in DATASETS.items() if spec.buckets]
        raise ValueError(f"buckets=true is not valid for dataset {cfg.dataset!r}, whose examples share one shape; "
                         f"valid: a dataset of aspect-ratio buckets {valid}, or buckets=false")
    if cfg.model != "unet":
        raise ValueError(f"model={cfg.model!r} is not valid with buckets=true; valid: 'unet' (fully convolutional: "
                         "it runs at every bucket's shape)")
    for key in EXCLUSIVE:
        if getattr(config, key):
            raise ValueError(f"{key}={getattr(config, key)!r} is not valid with buckets=true; valid: {key} unset "
                             "(aspect-ratio buckets train a pixel-space run from scratch)")


# --- training ---------------------------------------------------------------------------
def prepare(run, data) -> None:
    """The images on the device and each bucket's members: `bucket_of` (N,), `members` (one
    (N_b,) index tensor per bucket), `counts` (K,)."""
    if data.bucket is None or tuple(data.buckets) != tuple(run.data.buckets):
        raise ValueError(f"dataset {data.name!r} holds no aspect-ratio buckets; buckets=true needs them")
    run.bucket_images = data.data.to(run.device)
    run.bucket_labels = data.labels.to(run.device) if data.labels is not None else None
    run.bucket_of = data.bucket.to(run.device)
    run.bucket_members = [torch.nonzero(data.bucket == b).flatten().to(run.device) for b in range(len(data.buckets))]
    run.bucket_counts = [len(m) for m in run.bucket_members]


def draw(run, d, n: int, generator: torch.Generator):
    """Adds to the draw `d` the global batch's bucket `bucket` (n,) int64 (one value; on the
    CPU: reading it is the draw's one device sync) and its rows `bucket_example` (n,) int64,
    positions in the training data (see the module docstring)."""
    g = generator
    pick = torch.randint(len(run.bucket_of), (1,), generator=g, device=g.device)
    b = int(run.bucket_of[pick.to(run.bucket_of.device)])
    rows = torch.randint(run.bucket_counts[b], (n,), generator=g, device=g.device)
    d.bucket = torch.full((n,), b, dtype=torch.int64)
    d.bucket_example = run.bucket_members[b][rows.to(run.device)]
    return d


def batch_shape(run, d) -> tuple[int, int]:
    """The (H, W) of the bucket of draw `d` (a training batch): SDXL's target size."""
    return tuple(run.data.buckets[int(d.bucket[0])])


def batch(run, d) -> tuple[Batch, object]:
    """This rank's rows of the draw `d` (already sliced) cut to their bucket: the batch
    (images (n, C, H, W), labels, positions) and the draw with its noise cut alike."""
    size = batch_shape(run, d)
    x = recentre(run.bucket_images[d.bucket_example], size)
    if getattr(run, "context", None) is not None and run.context.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = run.bucket_labels[d.bucket_example] if run.uses_labels else None
    noise = recentre(d.noise, size).contiguous() if d.noise is not None else None
    return Batch(x, y, d.bucket_example), dataclasses.replace(d, noise=noise)


# --- sampling ---------------------------------------------------------------------------
def sample_shape(run, size: tuple[int, int] | None) -> tuple[int, ...]:
    """The shape (C, H, W) of a run's samples at `size` (H, W): one of a bucketed run's
    buckets (None: the first); a run without buckets takes None or its own (H, W)."""
    channels, own = run.sample_shape[0], tuple(run.sample_shape[1:])
    if size is not None:
        size = tuple(int(v) for v in size) if _pair(size) else size
    if not active(run.config):
        if size is not None and size != own:
            valid = f"None or {format_sizes([own])}" if len(own) == 2 else "None"
            raise ValueError(f"size={_show(size)} is not valid for a run without aspect-ratio buckets; valid: {valid}")
        return tuple(run.sample_shape)
    buckets = [tuple(b) for b in run.data.buckets]
    if size is None:
        return (channels, *buckets[0])
    if size not in buckets:
        raise ValueError(f"size={_show(size)} is not valid; valid: the run's buckets {format_sizes(buckets)} (H x W)")
    return (channels, *size)


def preview(run, n: int, cond: dict) -> Tensor:
    """A training preview: n samples, the buckets in turn (sample i at bucket i mod K; each
    bucket's from the run's seed, with its rows of the condition `cond`), centred on the
    canvas, (n, C, Hc, Wc), for one grid."""
    from ..sampling import sample

    buckets, config = run.data.buckets, run.config
    out = torch.full((n, *run.sample_shape), -1.0, device=run.device)
    for b, size in enumerate(buckets):
        rows = torch.arange(b, n, len(buckets), device=run.device)
        if len(rows):
            # SDXL's micro-conditions (where the run has them): this bucket's size, uncropped
            rows_cond = {**{k: v[rows] for k, v in cond.items()},
                         **micro.sampling_condition(run, len(rows), None, None, size)}
            x = sample(run.denoiser, (len(rows), run.sample_shape[0], *size), config.sampler, config.sample_steps,
                       seed=run.cfg.seed, device=run.device, cond=rows_cond).x
            out[rows] = recentre(x, tuple(run.sample_shape[1:])).to(out)
    return out


def _pair(size) -> bool:
    return isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)


def _show(size) -> str:
    return f"{size[0]}x{size[1]}" if _pair(size) else repr(size)
