"""The runs a page offers: the run folders under one root, what each can do, and each one
loaded once.

A run folder is one whose config.json is hirune's (`run_folder.is_hirune_config`).  Every
run has a loss curve (its metrics.jsonl, while it trains too); a run *samples* here when it
is a diffusion run (any process: DDPM, score SDEs, flow matching; latent runs too) on
images with a checkpoint, and needs no input a page cannot give (a super-resolution run's
low-resolution images, an unCLIP decoder's CLIP embeddings).  Its condition is a class
(class_conditional), a prompt (text_encoder) or none; classifier-free guidance applies
where the run was trained with condition dropout (p_uncond > 0).

Which samplers suit a run is found by starting them: each is given the run's denoiser and
stopped at its first network evaluation; those that refuse the process before it (annealed
Langevin where sigma reaches 0, a reverse SDE singular at t = 1) are left out.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from ..checkpoint import find_checkpoint
from ..data import data_format
from ..inference import generate, load
from ..sampling import SAMPLERS
from ..training.run_folder import is_hirune_config, logged_records


class Unknown(LookupError):
    """An unknown run, job or file (HTTP 404); the message names the valid ones."""


def run_folders(root: Path) -> dict[str, Path]:
    """name -> folder of every run directly under `root`, by name."""
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "config.json").is_file()
            and is_hirune_config(p / "config.json")}


def describe(folder: Path) -> dict:
    """What the page shows of a run, from its config.json alone (nothing is loaded): name,
    family, dataset, model, its condition ("class" | "prompt" | "none", with the class
    count), whether guidance applies, its preview sampler and steps, and whether it samples
    here (`can_sample`, else `why_not`)."""
    values = json.loads((folder / "config.json").read_text())
    section = values.get("family_config", values)
    out = {"name": folder.name, "family": values.get("family", "diffusion"), "dataset": values["dataset"],
           "model": values["model"], "condition": "none", "classes": 0, "guidance": False,
           "sampler": section.get("sampler"), "steps": section.get("sample_steps"),
           "logged_steps": len(logged_records(folder))}
    if section.get("text_encoder"):
        out["condition"] = "prompt"
    elif section.get("class_conditional"):
        out["condition"] = "class"
    out["guidance"] = out["condition"] != "none" and float(section.get("p_uncond", 0) or 0) > 0
    why = _why_not(folder, out, section)
    out["can_sample"], out["why_not"] = why is None, why
    if why is None and out["condition"] == "class":
        out["classes"] = int(data_format(values["dataset"]).num_classes or 0)
    return out


def _why_not(folder: Path, out: dict, section: dict) -> str | None:
    if out["family"] != "diffusion":
        return f"a {out['family']} run: the page samples diffusion runs"
    try:
        kind = data_format(out["dataset"]).kind
    except (ValueError, OSError) as e:
        return f"its dataset is not readable here: {e}"
    if kind != "image":
        return f"a run on {kind} data: the page shows images"
    if section.get("low_res") or section.get("clip"):
        return "it needs low-resolution images or CLIP embeddings as input (hirune cascade / unclip)"
    if find_checkpoint(folder, thorough=False)[0] is None and not (folder / "weights.safetensors").is_file():
        return "no checkpoint yet"
    return None


class Runs:
    """The runs under `root`; `loaded(name)` loads a run once (and finds its samplers), later
    calls get the same object.  An unknown name raises Unknown, a run that does not sample
    ValueError, both naming the valid ones."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._loaded: dict[str, tuple[object, list[str]]] = {}
        self._lock = threading.Lock()

    def folder(self, name: str) -> Path:
        folders = run_folders(self.root)
        if name not in folders:
            raise Unknown(f"unknown run {name!r}; valid: {sorted(folders) or f'none (no runs under {self.root})'}")
        return folders[name]

    def listing(self) -> list[dict]:
        return [describe(folder) for folder in run_folders(self.root).values()]

    def sampling(self, name: str) -> dict:
        """describe(run) of a run that samples here; else ValueError naming those that do."""
        info = describe(self.folder(name))
        if not info["can_sample"]:
            valid = [r["name"] for r in self.listing() if r["can_sample"]]
            raise ValueError(f"run {name!r} does not sample here ({info['why_not']}); valid: {valid}")
        return info

    def loaded(self, name: str):
        """(the loaded run, its samplers)."""
        self.sampling(name)
        with self._lock:
            if name not in self._loaded:
                run = load(self.folder(name))
                self._loaded[name] = (run, usable_samplers(run))
            return self._loaded[name]


class _Reached(Exception):
    """A sampler got past its checks to its first network evaluation."""


class _Probe:
    """The run's denoiser (its attributes: process, ...), stopping at the first evaluation."""

    def __init__(self, denoiser):
        self.inner = denoiser

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        raise _Reached


def usable_samplers(run) -> list[str]:
    """The samplers whose checks pass for `run`'s process: each is started on one sample in
    two steps and stopped at its first network evaluation (a sampler that does not suit the
    process raises ValueError before it)."""
    usable = []
    for name in SAMPLERS:
        try:
            generate(run, 1, name, 2, seed=0, progress=False, denoiser=_Probe(run.denoiser))
        except _Reached:
            usable.append(name)
        except ValueError:
            continue
    return usable


__all__ = ["Runs", "Unknown", "describe", "run_folders", "usable_samplers"]
