"""Super-resolution diffusion (Imagen's cascade, Saharia et al. 2022; SR3, CDM): a diffusion
run that learns p(x given a low-resolution version of x), the second stage of a cascade.

The low-resolution input.  The training image x (B, C, H, W) is average-pooled by the
factor f = H / low_res to (B, C, low_res, low_res) -- exactly how the base dataset
(`mnist5k-14`) was made -- and brought back to H x W by *nearest* upsampling, which the
network reads as `cond_channels` extra input channels (`UNetConfig.cond_channels`).
Nearest, not bilinear: its average pool gives the low-resolution image back exactly
(pool(up(x_low)) = x_low), so the network sees nothing but the low-resolution pixels
and the upsampling adds no smoothing of its own for it to learn to undo.

Noise conditioning augmentation (Imagen sec. 2.5, Ho et al. 2022 "CDM" sec. 4.1).  At
training, per example a level a ~ U[0, noise_aug], a fraction of the process's time range,
and the low-resolution input is corrupted by the run's own forward process at the time
t(a) = t_min + a (t_max - t_min):

    z_a = alpha(t(a)) x_low + sigma(t(a)) eps',        eps' ~ N(0, I)

except that a = 0 is exactly x_low (alpha = 1, sigma = 0; a discrete DDPM's t = 0 is not
quite clean).  The network is told a (`UNetConfig.aug_level`).  At sampling a is a setting
(Imagen sweeps it; a small a hides the base model's artefacts, which the SR model never saw
in training on real low-resolution images).  With noise_aug = 0 the network is not told a.

Classifier-free guidance keeps the low-resolution input in both branches (its null
condition is `KEEP`): only the text is guided.  All random inputs (a and eps') are drawn in
the family's `draw`, for the whole global batch, so every rank computes the same thing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COND_KEYS = ("low_res", "aug_level")


# --- the math ------------------------------------------------------------------------
def downsample(x: Tensor, low_res: int) -> Tensor:
    """(B, C, H, W) -> (B, C, low_res, low_res) by average pooling over f x f blocks, f = H / low_res."""
    f = x.shape[-1] // low_res
    if f * low_res != x.shape[-1] or x.shape[-2] != x.shape[-1]:
        raise ValueError(f"low_res={low_res} is not valid for images of size {tuple(x.shape[-2:])}; "
                         "valid: a divisor of the (square) image size")
    return F.avg_pool2d(x, f)


def upsample(x_low: Tensor, size: int) -> Tensor:
    """(B, C, h, h) -> (B, C, size, size) by nearest upsampling (see the module docstring)."""
    return F.interpolate(x_low, size=(size, size), mode="nearest")


def level_coefficients(process, a: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) of the forward process at t(a) = t_min + a (t_max - t_min), (B,) float32;
    (1, 0) where a = 0."""
    t = process.t_min + a.double() * (process.t_max - process.t_min)
    alpha, sigma = process.alpha(t).double(), process.sigma(t).double()
    clean = a == 0
    alpha = torch.where(clean, torch.ones_like(alpha), alpha)
    sigma = torch.where(clean, torch.zeros_like(sigma), sigma)
    return alpha.float(), sigma.float()


def augment(process, x_low: Tensor, a: Tensor, noise: Tensor) -> Tensor:
    """z_a = alpha(t(a)) x_low + sigma(t(a)) eps' per example; x_low, noise (B, C, h, w), a (B,)."""
    alpha, sigma = level_coefficients(process, a.to(x_low.device))
    shape = (-1,) + (1,) * (x_low.ndim - 1)
    return alpha.view(shape) * x_low + sigma.view(shape) * noise.to(x_low)


def low_res_condition(process, x_low: Tensor, size: int, a: Tensor, noise: Tensor | None,
                      tell_level: bool) -> dict:
    """The network's keywords for low-resolution images x_low (B, C, h, h): the augmented
    image upsampled to size x size, and (when the network is told it) the level a (B,)."""
    z = x_low if noise is None else augment(process, x_low, a, noise)
    cond = {"low_res": upsample(z, size)}
    if tell_level:
        cond["aug_level"] = a.to(x_low.device, torch.float32)
    return cond


# --- the family's hooks (families/diffusion.py) ----------------------------------------
def check(cfg, config, shape: tuple[int, ...] | None) -> None:
    """The super-resolution settings: low_res < the image size and dividing it, on a UNet, on
    the dataset's images (no latent diffusion); noise_aug only with low_res."""
    if config.noise_aug and not config.low_res:
        raise ValueError(f"noise_aug={config.noise_aug} is not valid without low_res; valid: 0, "
                         "or set low_res (super-resolution) too")
    if not config.low_res:
        return
    if config.low_res < 0:
        raise ValueError(f"low_res={config.low_res} is not valid; valid: 0 (off) or a positive divisor of the "
                         "image size")
    if config.autoencoder:
        raise ValueError(f"low_res={config.low_res} is not valid with autoencoder= (latent diffusion); valid: "
                         "super-resolution of the dataset's images, autoencoder=''")
    if cfg.model != "unet":
        raise ValueError(f"model={cfg.model!r} is not valid with low_res (super-resolution); valid: 'unet'")
    if shape is None or len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"low_res={config.low_res} is not valid for dataset {cfg.dataset!r} of example shape "
                         f"{shape}; valid: square images (C, H, H)")
    size = shape[-1]
    if not (config.low_res < size and size % config.low_res == 0):
        divisors = [d for d in range(1, size) if size % d == 0]
        raise ValueError(f"low_res={config.low_res} is not valid for {size} x {size} images; valid: {divisors}")


def network_config(run) -> dict:
    """The UNet's super-resolution fields: the low-res image's channels, and whether it is told a."""
    return {"cond_channels": run.sample_shape[0], "aug_level": run.config.noise_aug > 0}


def draw(run, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """a ~ U[0, noise_aug] (n,) and eps' (n, C, low_res, low_res), for the whole global batch."""
    g, config = generator, run.config
    a = torch.rand(n, generator=g, device=g.device).to(run.device) * config.noise_aug
    c = run.sample_shape[0]
    noise = torch.randn((n, c, config.low_res, config.low_res), generator=g, device=run.device)
    return a, noise


def training_condition(run, x0: Tensor, a: Tensor, noise: Tensor) -> dict:
    """The keywords of a training batch x0 (B, C, H, W): its own low-resolution version, augmented."""
    return low_res_condition(run.process, downsample(x0, run.config.low_res), x0.shape[-1], a, noise,
                             run.config.noise_aug > 0)


def null_condition(run) -> dict:
    """Classifier-free guidance does not guide the low-resolution input: both branches see it."""
    from ..sampling.guidance import KEEP

    if not run.config.low_res:
        return {}
    return {key: KEEP for key in COND_KEYS[: 1 + (run.config.noise_aug > 0)]}


def sampling_condition(run, low_res: Tensor | None, aug_level: float, seed: int) -> dict:
    """The keywords of sampling an SR run from low-resolution images (N, C, low_res, low_res),
    augmented at the fixed level `aug_level` with noise seeded by `seed` (its own generator,
    so the sampler's noise is the same at every level); {} for other runs, which take none."""
    if not run.config.low_res:
        if low_res is not None or aug_level:
            raise ValueError("low_res / aug_level go with a super-resolution run (low_res > 0)")
        return {}
    check_low_res(run, low_res)
    if not 0.0 <= aug_level <= 1.0:
        raise ValueError(f"aug_level={aug_level} is not valid; valid: a level in [0, 1]")
    n = len(low_res)
    a = torch.full((n,), float(aug_level))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(low_res.shape, generator=g) if aug_level > 0 else None
    low = low_res.float().cpu()
    return {k: v.to(run.device) for k, v in low_res_condition(run.process, low, run.sample_shape[-1], a, noise,
                                                               run.config.noise_aug > 0).items()}


def check_low_res(run, low_res: Tensor | None) -> None:
    want = (run.sample_shape[0], run.config.low_res, run.config.low_res)
    if low_res is None:
        raise ValueError(f"a super-resolution run needs low_res: images of shape (N, {', '.join(map(str, want))})")
    if tuple(low_res.shape[1:]) != want:
        raise ValueError(f"low_res images of shape {tuple(low_res.shape[1:])} do not fit this super-resolution "
                         f"run; valid: (N, {', '.join(map(str, want))})")


def test_low_res(run, labels: Tensor | None, n: int) -> Tensor:
    """Default low-resolution inputs: the held-out test images downsampled, of `labels` in turn
    where given (the k-th image of each class for its k-th request), else the first n."""
    from ..data import load_dataset

    test = load_dataset(run.data.name, "test")
    if labels is None:
        idx = torch.arange(n) % len(test.data)
    else:
        by_class = {int(c): torch.nonzero(test.labels == c).flatten() for c in labels.unique()}
        seen: dict[int, int] = {}
        idx = []
        for c in labels.tolist():
            rows = by_class[int(c)]
            idx.append(int(rows[seen.get(c, 0) % len(rows)]))
            seen[c] = seen.get(c, 0) + 1
        idx = torch.tensor(idx)
    return downsample(test.data[idx], run.config.low_res)
