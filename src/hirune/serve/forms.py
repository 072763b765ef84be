"""The page's forms, checked before any work is queued: every bad value is refused with a
message naming what is valid, which the page shows next to the form (HTTP 422).

The library checks its own inputs too (`generate`, `guide`, `edit` raise ValueError naming
the valid values); these checks come first so that a bad value is answered at once, not
after a job waited in the queue, and so that each names the form's own field.
"""

from __future__ import annotations

import math

MAX_STEPS = 1000   # a discrete DDPM schedule has at most its training steps (1000 for the presets)
MAX_SAMPLES = 64   # one page of samples; a trajectory keeps every step of each


def integer(values: dict, key: str, default: int, lo: int, hi: int | None = None) -> int:
    value = values.get(key, default)
    if value is None or value == "":
        value = default
    valid = f"an integer in {lo}..{hi}" if hi is not None else f"an integer >= {lo}"
    if isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not valid; valid: {valid}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}={value!r} is not valid; valid: {valid}") from None
    if number != float(value) or number < lo or (hi is not None and number > hi):
        raise ValueError(f"{key}={value!r} is not valid; valid: {valid}")
    return number


def scale(values: dict, info: dict, key: str = "guidance") -> float | None:
    """The classifier-free guidance scale (1 = the conditional model, > 1 sharper), or None
    (no guidance: the run's own denoiser)."""
    value = values.get(key)
    if value is None or value == "":
        return None
    if not info["guidance"]:
        why = ("it is unconditional" if info["condition"] == "none"
               else "it was trained without condition dropout (p_uncond = 0)")
        raise ValueError(f"{key}={value!r}: run {info['name']!r} takes no guidance ({why}); valid: leave it empty")
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and 0 <= number <= 30):
        raise ValueError(f"{key}={value!r} is not valid; valid: a number in 0..30 (1: conditional, > 1 sharper)")
    return number


def condition(values: dict, info: dict, key: str, required: bool = False):
    """A class (class runs: an integer 0..classes-1) or a prompt (text runs: a string) under
    `key`; None where not given and not `required`."""
    value = values.get(key)
    given = value is not None and value != ""
    kind = info["condition"]
    if kind == "none":
        if given or required:
            raise ValueError(f"{key}={value!r}: run {info['name']!r} is unconditional; valid: leave it empty "
                             "(classes and prompts go with conditional runs)")
        return None
    if not given:
        if required:
            what = f"a class in 0..{info['classes'] - 1}" if kind == "class" else "a prompt"
            raise ValueError(f"{key} is missing; valid: {what}")
        return None
    if kind == "prompt":
        return str(value)
    return integer(values, key, 0, 0, info["classes"] - 1)


def sample_form(values: dict, info: dict, samplers: list[str]) -> dict:
    """The checked keywords of a sample job: sampler, steps, n, seed, guidance, and label
    or prompt."""
    sampler = values.get("sampler") or info["sampler"]
    if sampler not in samplers:
        raise ValueError(f"sampler={sampler!r} is not valid for run {info['name']!r}; valid: {samplers}")
    form = {"sampler": sampler, "steps": integer(values, "steps", info["steps"] or 50, 1, MAX_STEPS),
            "n": integer(values, "n", 16, 1, MAX_SAMPLES), "seed": integer(values, "seed", 0, 0, 2**63 - 1),
            "guidance": scale(values, info)}
    key = "prompt" if info["condition"] == "prompt" else "label"
    form[key] = condition(values, info, key)
    for other in {"label", "prompt"} - {key}:
        if values.get(other) not in (None, ""):
            raise ValueError(f"{other}={values[other]!r}: run {info['name']!r} is conditioned on "
                             f"{info['condition']}; valid: {key}")
    return form


def edit_form(values: dict, info: dict) -> dict:
    """The checked keywords of an edit job: source and target (classes or prompts), steps,
    guidance (default 1: the plain conditional model)."""
    if info["condition"] == "none":
        raise ValueError(f"run {info['name']!r} is unconditional; editing inverts under one class or prompt and "
                         "resamples under another: valid: a class- or prompt-conditional run")
    g = scale(values, info)
    return {"source": condition(values, info, "source", required=True),
            "target": condition(values, info, "target", required=True),
            "steps": integer(values, "steps", 50, 1, MAX_STEPS), "guidance": 1.0 if g is None else g}


__all__ = ["MAX_SAMPLES", "MAX_STEPS", "edit_form", "integer", "sample_form", "scale"]
