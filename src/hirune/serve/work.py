"""What a job does: sample a run (samples, the trajectory, the x0 estimates along it) or
invert and edit an uploaded image, writing its pictures into the job's folder.

Sampling is `generate` with the sampler's callback: each step reports its progress and
hands over the network's x0 estimate, the denoised image the sampler steps toward
(DDIM eq. 12's "predicted x0"); the trajectory is the x_t the sampler visited, noise
first.  The samples are the ones `generate` gives for the same run, seed and settings,
bitwise: the callback only watches.

Editing is `inference.editing.edit` (exact DDIM inversion under the source condition,
DDIM under the target) and, from the same noise, `regenerate` under the source: the
reconstruction, which shows what the inversion kept.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..inference import edit, generate, guide, regenerate
from ..metrics import psnr
from ..viz import grid_gif, image_grid

X0_COLUMNS = 10  # the x0 estimates shown: this many steps, evenly chosen, first and last kept
X0_ROWS = 4      # of the first few samples


def sample_work(run, form: dict, results: Path):
    """The job that draws `form`'s samples (see `forms.sample_form`) of the loaded `run`; its
    pictures go to results / job id."""

    def work(job) -> dict:
        estimates, steps, folder = [], form["steps"], results / job.id

        def callback(info: dict) -> None:  # i: the index of the grid time just reached, of `steps`
            job.report((info["i"] + 1) / steps)
            if info["x0"] is not None:
                estimates.append(info["x0"][:X0_ROWS].detach().cpu().clone())

        denoiser = guide(run, "cfg", form["guidance"]) if form["guidance"] is not None else None
        out, labels = generate(run, form["n"], form["sampler"], steps, seed=form["seed"], label=form.get("label"),
                               prompt=form.get("prompt"), denoiser=denoiser, trajectory=True, progress=False,
                               callback=callback)
        folder.mkdir(parents=True, exist_ok=True)
        image_grid(out.x, folder / "samples.png")
        grid_gif(out.trajectory, folder / "trajectory.gif")
        files = ["samples.png", "trajectory.gif"]
        if estimates:
            x0_strip(run, estimates, folder / "x0.png")
            files.append("x0.png")
        return {"files": files, "nfe": out.nfe, "labels": None if labels is None else labels.tolist()}

    return work


def x0_strip(run, estimates: list[torch.Tensor], path: Path) -> Path:
    """One row per sample, one column per chosen step: the x0 estimate sharpening along the
    trajectory (latent runs: decoded)."""
    k = len(estimates)
    m = min(k, X0_COLUMNS)
    keep = sorted({round(j * (k - 1) / max(1, m - 1)) for j in range(m)})
    chosen = torch.stack([estimates[j] for j in keep], dim=1)  # (rows, columns, C, H, W)
    rows, columns = chosen.shape[:2]
    images = chosen.flatten(0, 1)
    if run.first_stage is not None:
        with torch.no_grad():
            images = run.decode(images)
    return image_grid(images, path, nrow=columns)


def edit_work(run, image: torch.Tensor, form: dict, results: Path):
    """The job that inverts `image` (1, C, H, W) in [-1, 1] under form["source"] and
    resamples it under form["target"] (see `forms.edit_form`); its picture goes to
    results / job id."""

    def work(job) -> dict:
        scale, steps, folder = form["guidance"], form["steps"], results / job.id
        edited, noise = edit(run, image, form["source"], form["target"], scale=scale, steps=steps)
        job.report(0.6)
        key = "prompts" if run.text is not None else "labels"
        source = [form["source"]] if run.text is not None else torch.tensor([form["source"]])
        denoiser = guide(run, "cfg", scale) if scale != 1 else None
        back = regenerate(run, noise, **{key: source}, denoiser=denoiser, steps=steps).x
        folder.mkdir(parents=True, exist_ok=True)
        image_grid(torch.cat([image, back, edited]), folder / "edit.png", nrow=3)
        return {"files": ["edit.png"], "columns": ["original", "reconstruction", "edit"],
                "reconstruction_psnr_db": float(psnr(back, image)[0])}

    return work


__all__ = ["edit_work", "sample_work", "x0_strip"]
