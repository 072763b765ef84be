"""SDXL's refiner (Podell et al. 2023, sec. 2.5): a base run samples the high-noise part of the
grid and a refiner run -- trained only on the low-noise part (`train_until`, SDXL's 0.2:
its 200 lowest of 1000 levels) -- continues from the intermediate step.

    out, labels = refine(load("runs/sdxl-base"), load("runs/sdxl-refiner"), 64)

`refined(base, refiner, switch)` is the denoiser (`sampling.experts.ExpertSwitch`): the
base's for grid times above the switch, the refiner's at and below it; the switch defaults
to the refiner's `train_until`, the part it was trained on (beyond it the refiner never
learned anything, so a later hand-over is refused).  Everything else is `generate` of the
base run: its condition, sampler, steps and seed.
"""

from __future__ import annotations

from ..sampling.experts import ExpertSwitch

SAME = ("process", "process_config", "text_encoder", "class_conditional", "micro_conditioning", "clip", "low_res",
        "autoencoder")


def check_pair(base, refiner) -> None:
    """Two diffusion runs on the same data shape, process and conditioning; the refiner a
    model of the low-noise part (train_until < 1)."""
    for role, run in (("base", base), ("refiner", refiner)):
        if getattr(run, "name", None) != "diffusion":
            raise ValueError(f"the {role} must be a diffusion run, not a {getattr(run, 'name', type(run).__name__)} "
                             "run")
    if tuple(base.sample_shape) != tuple(refiner.sample_shape):
        raise ValueError(f"the refiner samples {tuple(refiner.sample_shape)}, the base {tuple(base.sample_shape)}; "
                         "valid: a refiner of the base's shape")
    for key in SAME:
        a, b = getattr(base.config, key), getattr(refiner.config, key)
        if a != b:
            raise ValueError(f"the refiner has {key}={b!r}, the base {key}={a!r}; valid: the same {key}")


def switch_time(refiner, switch: float | None) -> float:
    """The hand-over time in the process's units from a fraction of the time range (default:
    the refiner's train_until): t_min + switch (t_max - t_min), discrete: switch T - 1."""
    until = refiner.config.train_until
    switch = until if switch is None else float(switch)
    if not 0.0 < switch <= until:
        raise ValueError(f"switch={switch} is not valid; valid: a fraction in (0, {until}], the part of the time "
                         f"range the refiner was trained on (train_until={until})")
    p = refiner.process
    if p.discrete:
        return switch * p.T - 1.0
    return p.t_min + switch * (p.t_max - p.t_min)


def refined(base, refiner, switch: float | None = None, base_denoiser=None, refiner_denoiser=None) -> ExpertSwitch:
    """The base's denoiser (or `base_denoiser`, e.g. guided) above the switch, the refiner's
    (or `refiner_denoiser`) at and below it."""
    check_pair(base, refiner)
    return ExpertSwitch(base_denoiser or base.denoiser, refiner_denoiser or refiner.denoiser,
                        switch_time(refiner, switch))


def refine(base, refiner, n: int, switch: float | None = None, *, base_denoiser=None, refiner_denoiser=None,
           **options):
    """n samples of the base run handed over to the refiner at `switch`: (SampleOutput, labels)."""
    from .generate import generate

    return generate(base, n, denoiser=refined(base, refiner, switch, base_denoiser, refiner_denoiser), **options)
