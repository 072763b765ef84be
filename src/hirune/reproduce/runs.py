"""The trained notes' runs: a preset trained for a budget's steps in a throw-away folder, the
held-out data it is scored on, and the baselines every toy density is read against.

The notes that need a network (reflow, the score models, the flows) train through the
library's own path -- `preset_config(PRESET, overrides)`, `train(config)`, `load(run)` --
so what a note measures is what `hirune train PRESET` would have made with the same
settings.  The runs live in a temporary folder that is removed when the note is done.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from .sampling import one_thread


@contextmanager
def run_folder(note: str) -> Iterator[Path]:
    """A temporary folder for a note's runs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"hirune-{note}-") as folder:
        yield Path(folder)


def train_preset(folder: Path, name: str, preset: str, steps: int, overrides: dict | None = None):
    """Train `preset` for `steps` optimizer steps (one checkpoint at the end, no previews, no
    evaluation) into folder/name on one torch thread, quietly; returns the loaded run
    (`training.load`: its EMA weights, its denoiser or flow)."""
    from ..training import load, preset_config, train

    values = {"steps": steps, "warmup": min(100, max(1, steps // 10)), "sample_every": 0, "ckpt_every": steps,
              "log_every": max(1, steps // 10), "eval_samples": 0, "out": str(folder / name), **(overrides or {})}
    with one_thread():
        train(preset_config(preset, values), progress=False)
    return load(folder / name)


def held_out(dataset: str, n: int) -> tuple[Tensor, Tensor]:
    """(test, reference): the first n points of the toy's test and train splits in float64.
    Samples are measured against `test`; `reference` against it is the real-vs-real floor."""
    from ..data import load_dataset

    return (load_dataset(dataset, "test").data[:n].double(), load_dataset(dataset, "train").data[:n].double())


def gaussian_nll(train: Tensor, test: Tensor) -> float:
    """The mean NLL (nats) of `test` under the Gaussian fitted to `train` (its mean and
    covariance): the baseline a density model must beat to have learned more than two moments."""
    train, test = train.double(), test.double()
    fitted = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    return float(-fitted.log_prob(test).mean())


def true_nll(dataset: str, test: Tensor) -> float | None:
    """The true density's mean NLL of `test` (nats) where the toy has one in closed form (the
    Gaussian-mixture toys), else None: the floor no model can beat in expectation."""
    from ..data.toys import TOYS

    mixture = TOYS[dataset].mixture if dataset in TOYS else None
    return None if mixture is None else float(-mixture.log_prob(test.double()).mean())
