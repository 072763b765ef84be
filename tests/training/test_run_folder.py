"""A run folder has one owner and is never silently restarted (issue 16, findings 1, 3, 4
and 6, each reproduced as it was reported): resume finds the newest complete checkpoint
when `latest` is missing or broken and says so; a run with progress is never restarted
from step 0; metrics.jsonl holds every step once; a live owner's folder is refused and a
dead owner's lock taken over; foreign folders, symbolic links and a `latest` that points
outside are refused; debris of dead writers is removed; a run killed at random moments
(inside checkpoint writes too) resumes bitwise where it was."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from hirune.checkpoint import checkpoints, latest_checkpoint, load_checkpoint
from hirune.training import TrainConfig, train
from hirune.training.run_folder import LOCK, RunFolderError


def config(out, **kw) -> TrainConfig:
    values = dict(dataset="two_moons", model="mlp", model_config={"hidden": 32, "depth": 2},
                  process="ddpm", process_config={"T": 100}, steps=8, batch_size=16, lr=1e-3, warmup=2,
                  lr_schedule="constant", log_every=1, ckpt_every=2, sample_every=0, out=str(out))
    return TrainConfig.from_dict({**values, **kw})


def steps_logged(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def weights(out) -> dict:
    return load_checkpoint(out)[0]


def test_resume_after_the_newest_checkpoint_is_deleted_continues_from_the_one_before(tmp_path, capsys):
    """Finding 1: `rm -rf checkpoints/step_N` then resume=true trained from step 0, silently,
    pruning the old checkpoints and mixing two runs in metrics.jsonl."""
    import shutil

    straight = tmp_path / "straight"
    train(config(straight), progress=False)
    out = tmp_path / "run"
    train(config(out, steps=6), progress=False)
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    with pytest.raises(FileExistsError, match="already holds a run.*step_00000004.*resume=true"):
        train(config(out), progress=False)  # without resume: refused, though `latest` is gone
    trainer = train(config(out, resume=True), progress=False)
    assert "resuming from step_00000004" in capsys.readouterr().err
    assert steps_logged(out) == list(range(1, 9))  # 5 and 6 logged once, from the resumed run
    assert losses(out) == losses(straight)
    assert trainer.step == 8 and [p.name for p in checkpoints(out)][-1] == "step_00000008"
    for group in ("model", "ema", "optimizer"):
        for k, v in weights(straight)[group].items():
            assert torch.equal(weights(out)[group][k], v), (group, k)


def test_broken_checkpoints_are_not_trained_over_and_a_run_without_any_starts_again(tmp_path, capsys):
    out = tmp_path / "run"
    train(config(out, steps=4), progress=False)
    for step in (2, 4):
        (out / "checkpoints" / f"step_{step:08d}" / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(RunFolderError, match="none of the checkpoints .* is complete.*move the folder away"):
        train(config(out, steps=6, resume=True), progress=False)
    assert steps_logged(out) == [1, 2, 3, 4]
    bare = tmp_path / "bare"  # killed before its first checkpoint
    train(config(bare, steps=2, ckpt_every=0), progress=False)
    train(config(bare, steps=3, resume=True), progress=False)
    assert "has no checkpoint (it logged steps up to 2): resuming from step 0" in capsys.readouterr().err
    assert steps_logged(bare) == [1, 2, 3]


def test_resume_of_a_new_folder_starts_a_run_and_says_so(tmp_path, capsys):
    train(config(tmp_path / "new", steps=2, resume=True), progress=False)
    assert "nothing to resume" in capsys.readouterr().err


def test_latest_may_only_name_a_step_folder_beside_it(tmp_path, capsys):
    """Finding 3: `latest` holding ../../../x was followed."""
    out = tmp_path / "run"
    train(config(out, steps=4), progress=False)
    outside = tmp_path / "x"
    outside.mkdir()
    (out / "checkpoints" / "latest").write_text("../../x")
    assert latest_checkpoint(out) is None
    train(config(out, steps=6, resume=True), progress=False)
    assert "not a step folder" in capsys.readouterr().err
    assert latest_checkpoint(out).name == "step_00000006" and not any(outside.iterdir())


def test_a_live_owner_keeps_its_folder_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    """Finding 3: two `hirune train` with the same out= interleaved their files."""
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid, "since": "now"}))
        with pytest.raises(RunFolderError, match=f"in use by pid {other.pid}"):
            train(config(out, steps=2), progress=False)
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # nothing written
    finally:
        other.kill()
        other.wait()
    train(config(out, steps=2), progress=False)  # its process is gone: taken over
    assert f"held by pid {other.pid}, which is gone" in capsys.readouterr().err
    assert not (out / LOCK).exists() and steps_logged(out) == [1, 2]


def test_two_trainings_into_one_folder_do_not_both_run(tmp_path, capsys):
    """Another process owns the folder (here one that claimed it and waits): `hirune train`
    into it exits 2 naming the owner, and writes nothing there."""
    from hirune.cli import main

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\n"
                               "from hirune.training.run_folder import own\n"
                               f"with own({str(out)!r}, resume=False):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["train", "ddpm-two-moons", 'model_config={"hidden": 8, "depth": 1}', "steps=2",
                     "sample_every=0", f"out={out}"])
        assert code == 2 and f"in use by pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    finally:
        holder.kill()
        holder.wait()


def test_foreign_folders_and_links_are_refused_and_left_as_they_were(tmp_path):
    """Finding 3: out=. over an unrelated config.json overwrote it; a symlinked config.json
    was written through to its target."""
    foreign = tmp_path / "project"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"name": "my project"}')
    with pytest.raises(RunFolderError, match="config.json that hirune did not write"):
        train(config(foreign, steps=2), progress=False)
    assert (foreign / "config.json").read_text() == '{"name": "my project"}'
    (foreign / "config.json").unlink()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a hirune run"):
        train(config(foreign, steps=2), progress=False)
    linked = tmp_path / "linked"
    linked.mkdir()
    target = tmp_path / "elsewhere.json"
    target.write_text("precious")
    (linked / "config.json").symlink_to(target)
    with pytest.raises(RunFolderError, match="symbolic link"):
        train(config(linked, steps=2), progress=False)
    assert target.read_text() == "precious"
    with pytest.raises(RunFolderError, match="is a file"):
        train(config(target, steps=2), progress=False)


def test_debris_of_dead_writers_is_removed_at_start(tmp_path):
    """Finding 6: abandoned .tmp-step_* folders were never cleaned."""
    out = tmp_path / "run"
    train(config(out, steps=4), progress=False)
    for name in (".tmp-step_00000006-12345", ".tmp-step_00000008"):
        (out / "checkpoints" / name).mkdir()
        (out / "checkpoints" / name / "model.safetensors").write_bytes(b"half")
    (out / "checkpoints" / ".latest.tmp").write_text("step_00000008")
    train(config(out, steps=6, resume=True), progress=False)
    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert left == ["latest", "step_00000002", "step_00000004", "step_00000006"], left


class InfiniteGradient(torch.autograd.Function):
    """The identity forward, an infinite gradient backward: a finite loss, an infinite norm."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def test_a_non_finite_gradient_norm_stops_the_run_naming_what_is_kept(tmp_path, monkeypatch):
    """Finding 2 and 4: lr=1e12 ran with infinite gradient norms to "done"; the stop with
    lr=inf claimed a checkpoint "is kept" where none existed."""
    from hirune.families.diffusion import Diffusion

    real = Diffusion.loss

    def infinite_at_step_3(self, forward, batch, draw, step):
        out = real(self, forward, batch, draw, step)
        if step == 3:
            out.loss = InfiniteGradient.apply(out.loss)
        return out

    monkeypatch.setattr(Diffusion, "loss", infinite_at_step_3)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm \((inf|nan)\) at step 3; the last good "
                                                 r"checkpoint, .*step_00000002, stays the latest"):
        train(config(tmp_path / "a"), progress=False)
    with pytest.raises(FloatingPointError, match="at step 3; no checkpoint was written before it"):
        train(config(tmp_path / "b", ckpt_every=0), progress=False)
    monkeypatch.setattr(Diffusion, "loss", real)  # the harness: without the fault, the run finishes
    assert train(config(tmp_path / "c"), progress=False).step == 8


def _train_quietly(cfg: TrainConfig) -> None:
    torch.set_num_threads(1)  # as this process: the same float results
    train(cfg, progress=False)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("kills", [4, pytest.param(12, marks=pytest.mark.slow)])  # 12: ~45 s, the suite's budget
def test_killed_at_random_moments_the_run_resumes_bitwise_and_leaves_no_debris(kills, tmp_path, monkeypatch):
    """kill -9 at `kills` random moments -- each a random fraction of a step after the run logged
    a new step, so inside checkpoint writes too (a checkpoint every step of a model whose
    checkpoint takes most of the step) -- resuming after each: the finished run equals an
    uninterrupted one in every checkpoint tensor and metrics line, and no temporary file or
    lock is left."""
    steps, big = 30, {"model_config": {"hidden": 256, "depth": 4}}
    straight = tmp_path / "straight"
    train(config(straight, steps=steps, ckpt_every=steps, **big), progress=False)
    out = tmp_path / "killed"
    from tqdm import tqdm

    if tqdm.monitor is not None:  # a thread of this process could hold tqdm's lock at a fork
        tqdm.monitor.exit()
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    ctx, rng = multiprocessing.get_context("fork"), random.Random(0)
    for _ in range(kills):
        logged = len(steps_logged(out)) if (out / "metrics.jsonl").exists() else 0
        child = ctx.Process(target=_train_quietly,
                            args=(config(out, steps=steps, ckpt_every=1, resume=True, **big),))
        child.start()
        deadline = time.time() + 60
        while child.is_alive() and time.time() < deadline and \
                (not (out / "metrics.jsonl").exists() or len(steps_logged(out)) <= logged):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.05))
        assert child.is_alive(), f"the run ended early (exit code {child.exitcode})"
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert len(steps_logged(out)) < steps  # it was stopped along the way
    train(config(out, steps=steps, ckpt_every=1, resume=True, **big), progress=False)
    assert steps_logged(out) == list(range(1, steps + 1))
    assert losses(out) == losses(straight)
    for group, tensors in weights(straight).items():
        for k, v in tensors.items():
            assert torch.equal(weights(out)[group][k], v), (group, k)
    debris = [p for p in out.rglob("*") if p.name.startswith(".")]
    assert debris == [], debris
