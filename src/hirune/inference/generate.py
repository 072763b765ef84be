"""The one public entry point from a trained run to samples.

    out, labels = generate("runs/vpred-mnist5k", 64)                       # a path, or
    run = load("runs/cond-mnist5k")                                       # a loaded run
    out, labels = generate(run, 64, per_class=True, denoiser=guide(run, "cfg", 3.0))

`generate` loads a path light (`training.loading.load`) and asks the run's family to sample
(`Family.generate`: a diffusion run's sampler over its denoiser, guided or not, decoded
from latents where it has a first stage; a normalizing flow's inverse).  `samplers.sample`
is the level below: samples of a denoiser, by name of sampler, grid and seed.
"""

from __future__ import annotations

from pathlib import Path

from ..families import Family
from ..families.diffusion_sampling import GUIDANCE


def _loaded(run) -> Family:
    if isinstance(run, (str, Path)):
        from ..training.loading import load

        return load(run)
    return run


def generate(run, n: int, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
             seed: int = 0, **options):
    """n samples of `run` (a loaded run, or the path of one) and their labels (or None):
    `options` are those of the family's `generate` (labels, prompts, label, per_class,
    prompt, denoiser, guided_labels, trajectory, progress, callback, temperature)."""
    if n < 1:
        raise ValueError(f"the number of samples must be >= 1, got {n}")
    return _loaded(run).generate(n, sampler, steps, spacing, seed, **options)


def guide(run, method: str = "none", scale: float = 1.0, *, classifier=None, rescale: float = 0.0,
          interval: tuple[float, float] | None = None, threshold: str | None = None, percentile: float = 0.995):
    """The denoiser of a diffusion run under guidance `method` (one of GUIDANCE) at `scale`;
    `classifier`: a loaded classifier run or its path (classifier guidance); `threshold`
    (none | static | dynamic, at `percentile`): the x0 estimate's thresholding, applied after
    guidance (pixel image runs only; None keeps the run's own clipping)."""
    run = _loaded(run)
    if (method != "none" or threshold is not None) and not hasattr(run, "guide"):
        raise ValueError(f"guidance and thresholding need a diffusion or flow-matching run; this is a {run.name} run")
    if method == "none" and threshold is None and not hasattr(run, "guide"):
        return None
    thresholding = {} if threshold is None else {"threshold": threshold, "percentile": percentile}
    return run.guide(method, scale, classifier=_loaded(classifier) if classifier is not None else None,
                     rescale=rescale, interval=interval, **thresholding)


__all__ = ["GUIDANCE", "generate", "guide"]
