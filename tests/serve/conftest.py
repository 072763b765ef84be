"""Fixtures of the tests of hirune serve: a folder of tiny trained runs (one per test
module), and `finished`, which waits for a job as the page does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hirune.training.loop import train
from hirune.training.presets import preset_config

# a UNet of a few thousand weights: seconds to train and to sample on one thread
TINY_UNET = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [],
             "head_channels": 8}


def tiny_run(root: Path, name: str, preset: str = "vpred-digits", **overrides) -> Path:
    """A run of `preset` on the 8 x 8 digits, 4 steps, every step logged, one checkpoint.  A
    large learning rate without warmup moves the weights (the output layer starts at zero) far
    enough in 4 steps that the class changes the samples beyond a pixel's rounding."""
    values = {"steps": 4, "batch_size": 8, "sample_every": 0, "ckpt_every": 4, "log_every": 1, "lr": 0.01, "warmup": 0,
              "model_config": TINY_UNET, "out": str(root / name), **overrides}
    train(preset_config(preset, values), progress=False)
    return root / name


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """cond: class-conditional DDPM (v-prediction) with condition dropout (classes, guidance,
    editing); plain: an unconditional rectified flow (a process some samplers refuse)."""
    root = tmp_path_factory.mktemp("serve-runs")
    tiny_run(root, "cond", class_conditional=True, p_uncond=0.2)
    tiny_run(root, "plain", "flow-digits")
    return root


@pytest.fixture(scope="module")
def cond_root(tmp_path_factory) -> Path:
    """The class-conditional run alone."""
    root = tmp_path_factory.mktemp("serve-runs")
    tiny_run(root, "cond", class_conditional=True, p_uncond=0.2)
    return root


@pytest.fixture
def finished():
    return wait_for


def wait_for(client, job: str, timeout: float = 60) -> dict:
    """The job's state once done or failed (polling like the page does)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = client.get(f"/api/jobs/{job}").json()
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.02)
    raise TimeoutError(f"job {job} did not finish in {timeout} s: {state}")
