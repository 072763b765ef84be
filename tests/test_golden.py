"""Behaviour unchanged: every family's short run (tests/golden/families.py), recorded at
commit 31bde1a before the family interface existed, gives the same tensors, losses,
previews and read-backs today, on one process and on two gloo processes, and the
checkpoints written then still load and sample the same images.

Bitwise where the machine is the one that recorded them (same torch, CPU kernels and
CPU) -- except the scores that pass through numpy and scipy (the Frechet distance's matrix
square root), whose versions setup.sh does not pin: those Python floats are compared to
1e-7 relative; elsewhere float rounding may differ, and the comparison is to 1e-5 (the
parity tolerance of tests/test_distributed.py) with previews, whose pixels are rounded,
skipped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

GOLDEN = Path(__file__).with_name("golden")
sys.path.insert(0, str(GOLDEN))
from families import RUNS, checkpoint_hashes, cli, environment, metrics, pixels_sha, read_back, train_words  # noqa: E402

V0 = GOLDEN / "v0"
RECORDED = json.loads((V0 / "golden.json").read_text())
EXACT = all(RECORDED[k] == v for k, v in environment().items())
TOL = 1e-5
SCIPY_TOL = 1e-7  # floats on the recording machine: numpy / scipy versions may differ, and the
# square root of a rank-deficient covariance product (8 samples) is good to about sqrt(eps)


def same(a, b, what: str) -> None:
    """Equal (bitwise on the recording machine, else to TOL) for tensors, arrays, numbers,
    and lists / dicts of them."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), f"{what}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{what}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{what}[{i}]")
    elif isinstance(a, (torch.Tensor, np.ndarray)):
        a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
        if EXACT or not a.is_floating_point():
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{what} differs"
        else:
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL, msg=what)
    elif isinstance(a, float):
        tol = SCIPY_TOL if EXACT else TOL
        assert a == pytest.approx(b, rel=tol, abs=tol), what
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


def tensors(ckpt: Path) -> dict:
    return {f.relative_to(ckpt).as_posix(): load_file(str(f)) for f in sorted(ckpt.rglob("*.safetensors"))}


def latest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def compare_read_back(root: Path, names, out: str, recorded_dir: Path, evaluations: dict) -> None:
    same(read_back(str(root.name), names, out), {k: v for k, v in evaluations.items()
                                                 if k.split()[1].split("/")[-1] in names}, "evaluations")
    for npz in sorted(Path(out).glob("*.npz")):
        old = np.load(recorded_dir / npz.name)
        new = np.load(npz)
        same({k: new[k] for k in new.files}, {k: old[k] for k in old.files}, npz.name)
    if EXACT:
        for png in sorted(Path(out).glob("*.png")):
            assert pixels_sha(png) == RECORDED["previews"][f"{Path(out).name}/{png.name}"], png.name


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_family_trains_as_it_did(workdir):
    """One process: the same checkpoint tensors (model, EMA, AdamW, RNG, and what each family
    adds), the same metrics lines and previews, and the same samples read back."""
    for name in RUNS:
        cli(["train", *train_words(name)])
        run, old = workdir / "runs" / name, V0 / "runs" / name
        same(metrics(run), metrics(old), f"{name} metrics")
        same(tensors(latest(run)), tensors(latest(old)), f"{name} checkpoint")
        if (old / "eval.json").exists():  # presets that score their run after training (eval_samples)
            same(json.loads((run / "eval.json").read_text()), json.loads((old / "eval.json").read_text()),
                 f"{name} eval.json")
        if EXACT:
            for png in sorted(run.glob("samples/*.png")):
                assert pixels_sha(png) == RECORDED["previews"][png.relative_to(workdir).as_posix()], png
    (workdir / "readback").mkdir()
    compare_read_back(workdir / "runs", list(RUNS), "readback", V0 / "readback", RECORDED["evaluations"])


def test_every_family_trains_as_it_did_on_two_processes(workdir):
    """Two gloo processes (ddp; zero1, zero2, zero3 for some): the same tensors and metrics."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(GOLDEN / "dist_train.py"), "runs2"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-30000:]
    for name in RUNS:
        run = workdir / "runs2" / name
        same(metrics(run), metrics(V0 / "runs2" / name), f"{name} metrics (2 processes)")
        if EXACT:
            assert checkpoint_hashes(run) == RECORDED["checkpoints2"][name], name
    (workdir / "readback2").mkdir()
    compare_read_back(workdir / "runs2", ["vpred", "iddpm", "dit", "uvit"], "readback2", V0 / "readback2",
                      RECORDED["evaluations2"])


def test_old_checkpoints_load_and_sample_the_same(workdir):
    """The run directories written at 31bde1a, read by today's `hirune sample / eval /
    invert`: the same samples, evaluations and inversions."""
    shutil.copytree(V0 / "runs", workdir / "runs")
    (workdir / "readback").mkdir()
    compare_read_back(workdir / "runs", list(RUNS), "readback", V0 / "readback", RECORDED["evaluations"])


def test_the_comparison_catches_a_changed_run(workdir):
    """Harness: the same run under another seed is caught, in its tensors and its losses."""
    name = "ddpm"
    cli(["train", *train_words(name), "seed=1"])
    with pytest.raises(AssertionError):
        same(tensors(latest(workdir / "runs" / name)), tensors(latest(V0 / "runs" / name)), name)
    with pytest.raises(AssertionError):
        same(metrics(workdir / "runs" / name), metrics(V0 / "runs" / name), name)
