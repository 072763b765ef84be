"""Imagen's cascade (Saharia et al. 2022, sec. 2.4): text -> a base model's low-resolution
sample -> a super-resolution model's full-resolution sample.

    images = cascade(load("runs/imagen-base-mnist5k"), load("runs/imagen-sr-mnist5k"),
                     ["a thick handwritten seven"] * 8, aug_level=0.1, base_scale=3.0, sr_scale=1.0)

1. The base run (a text run on `mnist5k-14`) samples x_low (N, C, 14, 14) under the
   prompts, guided at `base_scale` (classifier-free; 1 = the conditional model).
2. The SR run (`low_res` = 14) reads x_low upsampled to 28 x 28 (nearest,
   `families.superres`), noised to the fixed level `aug_level` with seeded noise (Imagen's
   sampling-time noise conditioning augmentation, told to the network when it was trained
   with augmentation), and samples (N, C, 28, 28) under the same prompts at `sr_scale`.
Both stages use the same sampler and steps (default: each run's own) and seed.
"""

from __future__ import annotations

from torch import Tensor


def check_cascade(base, sr) -> None:
    """base: a diffusion run without low_res; sr: a super-resolution run whose low resolution
    is the base run's image size, on the same channels and the same digits (datasets), both
    text-conditioned or neither."""
    if getattr(base, "name", None) != "diffusion" or getattr(sr, "name", None) != "diffusion":
        raise ValueError("a cascade needs two diffusion runs (base, sr)")
    if base.config.low_res:
        raise ValueError(f"the base run is a super-resolution run (low_res={base.config.low_res}); "
                         "valid: a base run with low_res=0, then the super-resolution run")
    if not sr.config.low_res:
        raise ValueError("the sr run is not a super-resolution run (low_res=0); valid: a run trained with "
                         "low_res > 0, e.g. `hirune train imagen-sr-mnist5k`")
    size = base.sample_shape[-1]
    if sr.config.low_res != size:
        raise ValueError(f"the super-resolution run's low resolution (low_res={sr.config.low_res}) does not match "
                         f"the base run's image size ({size} x {size}, dataset {base.data.name}); valid: an SR "
                         f"run trained with low_res={size}")
    if base.sample_shape[0] != sr.sample_shape[0]:
        raise ValueError(f"the base run has {base.sample_shape[0]} channels, the SR run {sr.sample_shape[0]}")
    if base.data.name.split("-")[0] != sr.data.name.split("-")[0]:
        raise ValueError(f"the base run is on {base.data.name}, the SR run on {sr.data.name}: different datasets")
    if (base.text is None) != (sr.text is None):
        raise ValueError("base and SR runs must both be text-conditioned (text_encoder=...) or neither")


def _denoiser(run, scale: float):
    return run.denoiser if scale == 1.0 else run.guide("cfg", scale)


def cascade(base, sr, prompts: list[str], *, aug_level: float = 0.0, base_scale: float = 1.0,
            sr_scale: float = 1.0, sampler: str | None = None, steps: int | None = None, seed: int = 0,
            progress: bool = False) -> Tensor:
    """Images (N, C, H, W) at the SR run's resolution for N prompts (loaded runs or their paths)."""
    from .generate import _loaded

    base, sr = _loaded(base), _loaded(sr)
    check_cascade(base, sr)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("a cascade needs at least one prompt")
    kw = dict(sampler=sampler, steps=steps, seed=seed, progress=progress)
    low, _ = base.generate(len(prompts), denoiser=_denoiser(base, base_scale), prompts=prompts, **kw)
    high, _ = sr.generate(len(prompts), denoiser=_denoiser(sr, sr_scale), prompts=prompts,
                          low_res=low.x.clamp(-1, 1), aug_level=aug_level, **kw)
    return high.x


__all__ = ["cascade", "check_cascade"]
