"""SDXL's conditioning tricks for a diffusion run (Podell et al. 2023, secs. 2.2 and 2.4;
Guttenberg 2023): micro-conditioning on the original size and the crop, and noise offset.

Size conditioning.  SDXL's data hold many images smaller than the training size; upscaled,
they teach the model blur.  Telling the network each image's original size (h, w) lets it
learn what blur means, and sampling at the full size asks for sharp images.  At digit scale
every image is full-size, so the augmentation `micro_min_size` makes some small: per
example an original height s ~ U{micro_min_size .. H} (the width keeps the aspect), the
image area-downsampled to s x s' and bilinearly upsampled back (`degrade`).

Crop conditioning.  Random crops cut objects off, and a model trained on them draws cut-off
objects; told the crop's top-left corner (c_top, c_left) it learns where the crop was, and
sampling at (0, 0) asks for the uncropped framing.  Here `micro_crop` = c: the image padded
by c pixels on every side (edge pixels repeated: the background) and cut at offsets
(dy, dx) ~ U{-c .. c}^2 from where it was (`shift`): the content moves by (-dy, -dx), and
(0, 0) is the image as it is (SDXL's (0, 0): the uncropped image).

The network is told six numbers per image (`micro_conditioning=true`), SDXL's
`add_time_ids`: original height and width, crop top and left, target height and width (the
image's size; SDXL's aspect buckets vary it), embedded by `nn.MicroEmbedding` into the time
embedding.  Without `micro_conditioning` the augmentations still apply, untold: the
ablation SDXL compares with (a model that learns the blur and the cuts as part of the data).
Classifier-free guidance keeps the micro-conditions in both branches, as SDXL does.

Noise offset (Guttenberg 2023, "Diffusion with offset noise"; used for SDXL's fine-tunes):
the training noise eps + offset x eps_c, eps_c ~ N(0, 1) one per image and channel (B, C,
1, 1).  With independent pixel noise, the mean of an image's noise has std 1 / sqrt(HW),
so at every t below t_max the noisy image's mean brightness is nearly the data's and the
model never learns to change it: samples keep the mean of the start noise (about 0).
The offset gives the noise a low-frequency part to learn, so samples' mean brightness can
spread like the data's.  Sampling is unchanged (plain N(0, I) noise).

Every random input is drawn in the family's `draw`, for the whole global batch, last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .settings import Range

RANGES = {"micro_min_size": Range(0, integer=True), "micro_crop": Range(0, integer=True),
          "noise_offset": Range(0)}
CONDITIONS = ("original height", "original width", "crop top", "crop left", "target height", "target width")
NETWORKS = ("unet", "dit")


# --- the math ------------------------------------------------------------------------
def degrade(x: Tensor, heights: Tensor) -> Tensor:
    """Each image x[i] (B, C, H, W) as if it were `heights[i]` pixels high and upscaled: area-
    downsampled to (h, round(h W / H)) and bilinearly upsampled back to (H, W); h = H is x[i]
    itself, exactly."""
    H, W = x.shape[-2:]
    out = x.clone()
    for h in heights.unique().tolist():
        if h >= H:
            continue
        rows = (heights == h).nonzero().flatten().to(x.device)
        small = F.interpolate(x[rows], size=(h, original_width(h, H, W)), mode="area")
        out[rows] = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)
    return out


def original_width(h: int, H: int, W: int) -> int:
    return max(1, round(h * W / H))


def shift(x: Tensor, offsets: Tensor, margin: int) -> Tensor:
    """Each image x[i] (B, C, H, W) cut at (dy, dx) = offsets[i] from where it is, |dy|, |dx| <=
    margin: padded by `margin` with its edge pixels repeated, then the H x W window at (margin
    + dy, margin + dx).  Content at (r, c) lands at (r - dy, c - dx)."""
    if margin == 0:
        return x
    H, W = x.shape[-2:]
    padded = F.pad(x, (margin,) * 4, mode="replicate")
    out = torch.empty_like(x)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        out[i] = padded[i, :, margin + dy: margin + dy + H, margin + dx: margin + dx + W]
    return out


def micro_vector(heights: Tensor, offsets: Tensor, size: tuple[int, int]) -> Tensor:
    """The six micro-conditions (B, 6) float32: original (h, w), crop (top, left), target (H, W)."""
    H, W = size
    widths = torch.tensor([original_width(h, H, W) for h in heights.tolist()])
    target = torch.tensor([H, W]).expand(len(heights), 2)
    return torch.cat([heights[:, None].cpu(), widths[:, None], offsets.cpu(), target], 1).float()


def center_of_mass(images: Tensor) -> Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, 2): the (row, column) centre of the ink (x + 1) / 2."""
    ink = ((images.float() + 1) / 2).clamp(0, 1).sum(1)                  # (N, H, W)
    H, W = ink.shape[-2:]
    total = ink.sum((1, 2)).clamp_min(1e-8)
    rows = (ink.sum(2) * torch.arange(H)).sum(1) / total
    cols = (ink.sum(1) * torch.arange(W)).sum(1) / total
    return torch.stack([rows, cols], 1)


def high_frequency_energy(images: Tensor) -> Tensor:
    """(N, C, H, W) -> (N,): the mean squared Laplacian (the 4-neighbour one, edges
    replicated), a measure of sharpness: blur lowers it."""
    x = F.pad(images.float(), (1, 1, 1, 1), mode="replicate")
    lap = (x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4 * x[..., 1:-1, 1:-1])
    return lap.pow(2).mean((1, 2, 3))


# --- the family's hooks (families/diffusion.py) ----------------------------------------
def augments(config) -> bool:
    return bool(config.micro_min_size or config.micro_crop)


def active(config) -> bool:
    """Whether a run draws sizes and crops: it augments, or tells the network, or both."""
    return augments(config) or config.micro_conditioning


def check(cfg, config, shape: tuple[int, ...] | None) -> None:
    """micro_* on images of the dataset's own pixels (no latent diffusion, no super-resolution),
    the size and crop within the image; micro_conditioning on a UNet or DiT; noise_offset with
    a noise draw (not reflow's fixed pairs)."""
    if config.noise_offset and config.reflow_from:
        raise ValueError(f"noise_offset={config.noise_offset} is not valid with reflow_from (its noise is the "
                         "teacher's); valid: 0")
    if not active(config):
        return
    if config.micro_conditioning and cfg.model not in NETWORKS:
        raise ValueError(f"model={cfg.model!r} is not valid with micro_conditioning; valid: {list(NETWORKS)}")
    if getattr(config, "buckets", False) and augments(config):
        raise ValueError("micro_min_size and micro_crop are not valid with buckets=true (each bucket's images keep "
                         "their own size); valid: micro_conditioning alone, which tells the bucket's target size")
    if config.autoencoder or config.low_res:
        raise ValueError("micro_min_size, micro_crop and micro_conditioning are not valid with autoencoder= or "
                         "low_res (they act on the dataset's own pixels); valid: a pixel-space run")
    if shape is None or len(shape) != 3:
        raise ValueError(f"micro-conditioning is not valid for dataset {cfg.dataset!r} of example shape {shape}; "
                         "valid: images (C, H, W)")
    H, W = shape[1:]
    if config.micro_min_size and not 1 <= config.micro_min_size <= H:
        raise ValueError(f"micro_min_size={config.micro_min_size} is not valid for {H} x {W} images; valid: 0 (off) "
                         f"or 1..{H}")
    if config.micro_crop >= min(H, W):
        raise ValueError(f"micro_crop={config.micro_crop} is not valid for {H} x {W} images; valid: "
                         f"0..{min(H, W) - 1}")


def network_config(run) -> dict:
    return {"micro_conditions": len(CONDITIONS)} if run.config.micro_conditioning else {}


def draw(run, n: int, generator: torch.Generator) -> tuple[Tensor | None, Tensor | None]:
    """Original heights (n,) int64 ~ U{micro_min_size .. H} (H where off) and crop offsets (n, 2)
    ~ U{-micro_crop .. micro_crop} (zero where off), for the whole global batch."""
    config, g = run.config, generator
    H = run.sample_shape[1]
    heights = torch.full((n,), H, dtype=torch.long)
    if config.micro_min_size:
        heights = torch.randint(config.micro_min_size, H + 1, (n,), generator=g, device=g.device).cpu()
    offsets = torch.zeros((n, 2), dtype=torch.long)
    if config.micro_crop:
        c = config.micro_crop
        offsets = torch.randint(-c, c + 1, (n, 2), generator=g, device=g.device).cpu()
    return heights, offsets


def draw_offset(run, n: int, generator: torch.Generator) -> Tensor:
    """The noise offset's eps_c (n, C, 1, 1)."""
    shape = (n, run.sample_shape[0]) + (1,) * (len(run.sample_shape) - 1)
    return torch.randn(shape, generator=generator, device=run.device)


def offset_noise(run, noise: Tensor, eps_c: Tensor | None) -> Tensor:
    """eps + noise_offset x eps_c (the training noise with its offset); eps where off."""
    return noise if eps_c is None else noise + run.config.noise_offset * eps_c.to(noise)


def training_batch(run, x0: Tensor, heights: Tensor, offsets: Tensor) -> tuple[Tensor, dict]:
    """A batch x0 (B, C, H, W) degraded to its original sizes and cut at its offsets, and the
    network's keywords ({"micro": (B, 6)} when it is told them).  Heights above H (a bucket
    smaller than the canvas: `families.buckets`) are H: the target size is the batch's."""
    heights = heights.clamp(max=x0.shape[-2])
    x = shift(degrade(x0, heights), offsets, run.config.micro_crop)
    cond = {"micro": micro_vector(heights, offsets, tuple(x0.shape[-2:])).to(x0.device)} \
        if run.config.micro_conditioning else {}
    return x, cond


def sampling_condition(run, n: int, original_size, crop, size: tuple[int, int] | None = None) -> dict:
    """The keywords of sampling at the target `size` (H, W) (default: the run's image size; a
    bucket's with aspect-ratio buckets): original size (h, w) (an int h: the width keeps the
    aspect; default: the target size, SDXL's "as sharp as the data") and crop (top, left)
    (default (0, 0), uncropped)."""
    if not run.config.micro_conditioning:
        if original_size is not None or crop is not None:
            raise ValueError("original_size and crop go with a micro-conditioned run (micro_conditioning=true)")
        return {}
    H, W = tuple(size) if size is not None else run.sample_shape[1:]
    if original_size is None:
        original_size = (H, W)
    elif isinstance(original_size, int):
        original_size = (original_size, original_width(original_size, H, W))
    crop = (0, 0) if crop is None else tuple(crop)
    if len(original_size) != 2 or min(original_size) < 1 or len(crop) != 2:
        raise ValueError(f"original_size={original_size}, crop={crop} are not valid; valid: original_size (h, w) "
                         "of positive pixels (or one int h), crop (top, left)")
    row = torch.tensor([*original_size, *crop, H, W], dtype=torch.float32)
    return {"micro": row.expand(n, -1).to(run.device)}


def null_condition(run) -> dict:
    """Classifier-free guidance keeps the micro-conditions in both branches (SDXL)."""
    from ..sampling.guidance import KEEP

    return {"micro": KEEP} if run.config.micro_conditioning else {}
