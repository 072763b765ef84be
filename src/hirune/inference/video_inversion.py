"""DDIM inversion of video: invert a clip, reconstruct it, and edit it by prompt
(CogVideoX; LittleNyima's development note "DDIM Inversion for CogVideoX").

Plain inversion (`sampling.ddim_invert`, exact=False) walks DDIM's grid upwards with the
network's prediction one step behind; sampling back from its noise under the same caption
drifts a little.  The note found that on CogVideoX the reconstruction does not return the
clip at all, and left the cause open.  Two suspects are measured here:
  * classifier-free guidance: the inversion ran at scale 1, the resampling at 6 (and with
    another prompt, for an edit), so the two walks follow different fields;
  * the schedule: diffusers' `DDIMInverseScheduler(**CogVideoXDDIMScheduler.config)` drops
    the `snr_shift_scale` it does not know, so the inversion walks the unshifted schedule
    and the sampler the shifted one (`inverse_process(run, drop_snr_shift=True)`).

The note's fix keeps the inversion's trajectory -- the latents at every grid time, not the
keys and values, which would be 42 blocks x 50 steps of them -- and reconstructs with
*reference attention*: at grid time t the batch is [rows; the trajectory's latent at t],
and each row's self-attention also reads the keys and values of that reference, which the
network recomputes as the inversion computed them (the source caption, no guidance;
`models.cogvideox`, reference=True).  The reference pulls the resampling back to the
clip's trajectory even where its own noise would not.

hirune's exact inversion (`ddim_invert(exact=True)`: each step solved by fixed-point
iteration) is the baseline that needs no reference: DDIM from its noise returns the clip to
solver tolerance at scale 1.

    run = load("runs/cogvideox-moving-mnist5k")
    clip = moving_digits("test").data[:4]                              # (4, 1, 9, 32, 32)
    inv = invert(run, clip, ["a seven moving left"] * 4)               # plain; exact=True for the fixed point
    same = reconstruct(run, inv, ["a seven moving left"] * 4)          # DDIM back from inv.noise
    edit = reconstruct(run, inv, ["a two moving left"] * 4, scale=6, reference=True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..process import Denoiser, make_process
from ..sampling import ddim, ddim_invert
from ..sampling.timesteps import time_grid


@dataclass
class Inversion:
    """noise: the latents at the grid's first (largest) time; trajectory: the latents at
    each grid time (the reference); latents: the clip's (t = 0); ts: the decreasing grid;
    cond: the network's condition the inversion ran under."""

    noise: Tensor
    trajectory: dict[float, Tensor]
    latents: Tensor
    ts: Tensor
    cond: dict

    def at(self, t: float) -> Tensor:
        """The trajectory's latents at grid time t."""
        near = min(self.trajectory, key=lambda s: abs(s - t))
        if abs(near - t) > 1e-3:
            raise ValueError(f"t={t} is not a time of the inversion's grid; valid: {sorted(self.trajectory)}")
        return self.trajectory[near]


def check_video_run(run) -> None:
    """Video inversion needs a text-conditioned video diffusion run (family `video`)."""
    if getattr(run, "name", None) != "video" or getattr(run, "text", None) is None:
        raise ValueError(f"video inversion needs a text-conditioned video run (family 'video', text_encoder=tiny|"
                         f"minilm, e.g. `hirune train cogvideox-moving-mnist5k`); this is a "
                         f"{getattr(run, 'name', '?')} run")


def inverse_process(run, drop_snr_shift: bool = False):
    """The run's process, or with drop_snr_shift the one an inverse scheduler built from the
    sampler's config without its SNR shift would walk (diffusers' DDIMInverseScheduler has no
    `snr_shift_scale`): the same betas before the shift, shift 1."""
    if not drop_snr_shift:
        return run.process
    kwargs = dict(run.config.process_config)
    if float(kwargs.get("snr_shift", 1.0)) == 1.0:
        raise ValueError("drop_snr_shift=True changes nothing: the run's process has no SNR shift (snr_shift=1); "
                         "train one with process_config snr_shift > 1 (CogVideoX: 3)")
    return make_process(run.config.process, **{**kwargs, "snr_shift": 1.0})


def guided(run, network, process, scale: float):
    """The denoiser of `network` on `process`, under classifier-free guidance at `scale`
    (the empty caption as the null condition; 1: the conditional model alone)."""
    from ..sampling.guidance import ClassifierFreeGuidance

    denoiser = Denoiser(network, process, run.prediction)
    return ClassifierFreeGuidance(denoiser, scale, run.text.null(run.device)) if scale != 1 else denoiser


def invert(run, clips: Tensor, prompts: list[str], *, steps: int = 50, exact: bool = False,
           drop_snr_shift: bool = False, scale: float = 1.0) -> Inversion:
    """DDIM inversion of clips (B, C, T, H, W) in [-1, 1] under their captions: encode to
    the VAE's latents, walk the run's trailing grid upwards (plain, or `exact` fixed-point)
    with classifier-free guidance at `scale` (1, the usual: the conditional model), keep
    every latent on the way."""
    check_video_run(run)
    if len(prompts) != len(clips):
        raise ValueError(f"{len(prompts)} prompts for {len(clips)} clips; give one per clip")
    process = inverse_process(run, drop_snr_shift)
    ts = time_grid(run.process, steps, "trailing")
    cond = run.condition(None, list(prompts))
    with torch.no_grad():
        latents = run.encode(clips.to(run.device))
        out = ddim_invert(guided(run, run.model, process, scale), latents, ts, exact=exact, cond=cond,
                          return_trajectory=True)
    times = ts.flip(0).tolist()  # the trajectory: the latents, then one entry per time, increasing
    trajectory = {t: x for t, x in zip(times, out.trajectory[1:])}
    return Inversion(out.x, trajectory, latents, ts, cond)


class ReferenceAttention:
    """The network with reference attention to an inversion's trajectory: at time t,
    model([x; references at t], reference=True)'s first rows.  The references carry the
    inversion's own condition; under classifier-free guidance (a batch of twice the rows)
    each half reads the same references."""

    def __init__(self, model, inversion: Inversion):
        self.model, self.inversion = model, inversion

    def __call__(self, x: Tensor, t: Tensor, **cond) -> Tensor:
        ref = self.inversion.at(float(t[0]))
        repeats = len(x) // len(ref)
        if repeats * len(ref) != len(x):
            raise ValueError(f"{len(x)} rows for {len(ref)} reference clips; valid: a multiple of them")
        ref_cond = self.inversion.cond
        if sorted(ref_cond) != sorted(cond):
            raise ValueError(f"the condition keys {sorted(cond)} differ from the inversion's {sorted(ref_cond)}")
        both = {k: torch.cat([v, ref_cond[k].repeat(repeats, *[1] * (v.dim() - 1))]) for k, v in cond.items()}
        rows = torch.cat([x, ref.repeat(repeats, *[1] * (x.dim() - 1))])
        times = torch.cat([t, t[:1].expand(len(rows) - len(x))])
        return self.model(rows, times, **both, reference=True)[: len(x)]


def reconstruct(run, inversion: Inversion, prompts: list[str], *, scale: float = 1.0, reference: bool = False,
                noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """DDIM from the inversion's noise (or `noise`: fresh noise, the ablation) over its grid
    under `prompts` with classifier-free guidance at `scale` (1: the conditional model),
    with reference attention to its trajectory or not.  Returns (clips in data space,
    latents)."""
    check_video_run(run)
    start = inversion.noise if noise is None else noise
    if len(prompts) != len(start):
        raise ValueError(f"{len(prompts)} prompts for {len(start)} clips; give one per clip")
    network = ReferenceAttention(run.model, inversion) if reference else run.model
    denoiser = guided(run, network, run.process, scale)
    with torch.no_grad():
        latents = ddim(denoiser, start, inversion.ts, cond=run.condition(None, list(prompts))).x
        return run.decode(latents).clamp(-1, 1), latents


def load_clip(run, source: str) -> tuple[Tensor, str]:
    """Clip N of a split of the run's dataset (`test:N` / `train:N`): (1, C, T, H, W) in
    [-1, 1] and its caption as training writes it (phrasing 0)."""
    from ..data import load_dataset
    from ..data.video_captions import VideoCaptioner

    check_video_run(run)
    split, _, index = source.partition(":")
    if split not in ("test", "train") or not index.isdigit():
        raise ValueError(f"{source!r} is not valid; valid: test:N or train:N, a clip of the run's dataset")
    data = load_dataset(run.data.name, split)
    if int(index) >= len(data.data):
        raise ValueError(f"{source!r}: N must be 0..{len(data.data) - 1} for the {split} split")
    i = int(index)
    return data.data[i:i + 1].clone(), VideoCaptioner(data).captions(torch.tensor([i]), torch.tensor([0]))[0]


def edit(run, clips: Tensor, source: list[str], target: list[str], *, scale: float = 6.0, steps: int = 50,
         exact: bool = False, reference: bool = True) -> Tensor:
    """Invert clips under their captions `source` (scale 1; `exact`: the fixed point) and
    resample under `target` at `scale`, with reference attention to the inversion's
    trajectory or not.  Returns the edited clips in data space."""
    inversion = invert(run, clips, source, steps=steps, exact=exact)
    return reconstruct(run, inversion, target, scale=scale, reference=reference)[0]


def outside_digit(clips: Tensor, ink: float = -0.8, margin: int = 2) -> Tensor:
    """(B, C, T, H, W) bool: the pixels farther than `margin` px from the clip's ink (values
    above `ink`) in their frame: what an edit of the digit should leave as it was."""
    frames = (clips > ink).float().transpose(1, 2).flatten(0, 1)                 # (B T, C, H, W)
    near = F.max_pool2d(frames, 2 * margin + 1, stride=1, padding=margin) > 0
    return ~near.unflatten(0, (clips.shape[0], clips.shape[2])).transpose(1, 2)


def psnr(a: Tensor, b: Tensor, where: Tensor | None = None, data_range: float = 2.0) -> Tensor:
    """PSNR per clip in dB for clips in [-1, 1], over the pixels `where` is True (all)."""
    err = (a.double() - b.double()).pow(2)
    if where is None:
        where = torch.ones_like(err, dtype=torch.bool)
    mse = (err * where).flatten(1).sum(1) / where.flatten(1).sum(1).clamp(min=1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-30))


__all__ = ["Inversion", "ReferenceAttention", "check_video_run", "edit", "guided", "inverse_process", "invert",
           "load_clip", "outside_digit", "psnr", "reconstruct"]
