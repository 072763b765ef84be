"""Checkpoints: round trips, atomic 'latest', corruption and config mismatch are named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from hirune.checkpoint import (CheckpointError, flatten_optimizer_state, latest_checkpoint,
                               load_checkpoint, save_checkpoint, unflatten_optimizer_state)


def small_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_model_optimizer_and_state(tmp_path):
    model, opt = small_state()
    opt_tensors, opt_meta = flatten_optimizer_state(opt.state_dict())
    save_checkpoint(tmp_path, 7, {"model": model.state_dict(), "optimizer": opt_tensors},
                    {"config": {"lr": 1e-3}, "optimizer": opt_meta})
    tensors, state = load_checkpoint(tmp_path, expect_config={"lr": 1e-3})
    assert state["step"] == 7
    for k, v in model.state_dict().items():
        assert torch.equal(tensors["model"][k], v)
    model2, opt2 = small_state()
    opt2.load_state_dict(unflatten_optimizer_state(tensors["optimizer"], state["optimizer"]))
    for (a, b) in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k]))


def test_latest_moves_only_when_complete_and_old_ones_are_pruned(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"model": {"w": torch.full((2,), float(step))}}, {}, keep=2)
    assert latest_checkpoint(tmp_path).name == "step_00000004"
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == ["step_00000003", "step_00000004"]


def test_corrupt_or_truncated_files_are_named_and_previous_kept(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(1000)}}, {}, keep=None)
    good = save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(1000)}}, {}, keep=None)
    f = good / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path)
    tensors, state = load_checkpoint(tmp_path / "checkpoints" / "step_00000001")
    assert state["step"] == 1 and torch.equal(tensors["model"]["w"], torch.ones(1000))
    (good / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(good)
    empty_run = tmp_path / "empty"
    (empty_run / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(empty_run)
    with pytest.raises(CheckpointError, match="not a hirune checkpoint"):
        load_checkpoint(empty_run / "checkpoints")


def test_config_mismatch_lists_keys(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(1)}}, {"config": {"lr": 1.0, "size": 4}})
    with pytest.raises(CheckpointError, match=r"differing keys: \['size'\]"):
        load_checkpoint(tmp_path, expect_config={"lr": 1.0, "size": 8})


def test_no_pickle_anywhere(tmp_path):
    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(1)}}, {"config": {}})
    files = {p.suffix for p in latest_checkpoint(tmp_path).iterdir()}
    assert files == {".safetensors", ".json", ".sha256"}  # tensors, state.json and its hash


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_kill_during_save_keeps_previous_latest(tmp_path):
    """kill -9 while big checkpoints are being written: 'latest' always names a complete,
    verifiable checkpoint."""
    script = textwrap.dedent(f"""
        import torch, sys
        from hirune.checkpoint import save_checkpoint
        save_checkpoint({str(tmp_path)!r}, 1, {{"model": {{"w": torch.zeros(10)}}}}, {{}})
        print("first", flush=True)
        step = 2
        while True:
            save_checkpoint({str(tmp_path)!r}, step, {{"model": {{"w": torch.randn(4_000_000)}}}}, {{}}, keep=2)
            step += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "first"
    import time
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tensors, state = load_checkpoint(tmp_path)  # verifies the sha256 of every file
    assert state["step"] >= 1


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("files"), "needs 'files'"),
    (lambda s: s.update(files=["model.safetensors"]), "needs 'files'"),
    (lambda s: s.update(step="3"), "'step' \\(an int\\)"),
    (lambda s: s.update(step=-1), "'step' \\(an int\\)"),
    (lambda s: s.update(format="hirune-checkpoint-9"), "unknown checkpoint format"),
    (lambda s: s["files"].update({"../../evil.safetensors": "0" * 64}), "outside its checkpoint folder"),
    (lambda s: s["files"].update({"extra.safetensors": "0" * 64}), "missing extra.safetensors"),
    (lambda s: s["files"].update({"model.safetensors": "0" * 64}), "sha256 mismatch"),
    (lambda s: s.clear(), "unknown checkpoint format"),
])
def test_a_wrong_but_valid_state_json_is_named_not_a_traceback(tmp_path, edit, message):
    """Issue 16, finding 4: nine kinds of edited state.json raised KeyError, AttributeError or
    size mismatches.  state.sha256 catches every edit; without it (checkpoints written before
    it existed) the structure is checked and named."""
    path = save_checkpoint(tmp_path, 3, {"model": {"w": torch.ones(2)}}, {"config": {}})
    state = json.loads((path / "state.json").read_text())
    edit(state)
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="edited"):
        load_checkpoint(path)
    (path / "state.sha256").unlink()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_failed_save_leaves_no_debris_and_names_the_latest(tmp_path, monkeypatch):
    """Issue 16, finding 4: a full disk raised SafetensorError and each retry left another
    temporary folder."""
    import errno

    import hirune.checkpoint as C

    save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, {})

    def disk_full(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C, "save_file", disk_full)
    for _ in range(2):
        with pytest.raises(CheckpointError, match="No space left.*the latest stays step_00000001"):
            save_checkpoint(tmp_path, 2, {"model": {"w": torch.zeros(2)}}, {})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000001"]
    assert latest_checkpoint(tmp_path).name == "step_00000001"
