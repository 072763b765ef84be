"""The training loop: exact resume, EMA once per optimizer step, faults handled."""

from __future__ import annotations

import json

import pytest
import torch

from hirune.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from hirune.trainer import TrainConfig, lr_at, micro_batch_indices, train


def toy_config(tmp_path, **kw) -> TrainConfig:
    base = dict(dataset="two_moons", model="mlp", model_config={"hidden": 32, "depth": 2, "dropout": 0.1},
                process="ddpm", process_config={"T": 100}, steps=12, batch_size=32, grad_accum=2,
                lr=1e-3, warmup=3, log_every=1, ckpt_every=6, sample_every=0, out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig(**base)


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in open(f"{run_dir}/metrics.jsonl")]


def test_resume_equals_uninterrupted(tmp_path):
    straight = train(toy_config(tmp_path / "a"), progress=False)
    cfg = toy_config(tmp_path / "b")
    train(cfg, stop_after=6, progress=False)               # "killed" after the step-6 checkpoint
    resumed = train(toy_config(tmp_path / "b", resume=True), progress=False)
    assert losses(tmp_path / "a" / "run") == losses(tmp_path / "b" / "run")
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    for k in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k])


def test_resume_from_an_older_state_is_caught_by_the_test(tmp_path):
    """The resume test can fail: restarting without restoring the optimizer state diverges."""
    train(toy_config(tmp_path / "a"), progress=False)
    train(toy_config(tmp_path / "b"), stop_after=6, progress=False)
    ckpt = latest_checkpoint(tmp_path / "b" / "run")
    optimizer_file = ckpt / "optimizer.safetensors"
    tensors, state = load_checkpoint(ckpt)
    from safetensors.torch import save_file
    from hirune.checkpoint import _sha256
    save_file({k: torch.zeros_like(v) for k, v in tensors["optimizer"].items()}, str(optimizer_file))
    state["files"]["optimizer.safetensors"] = _sha256(optimizer_file)
    (ckpt / "state.json").write_text(json.dumps(state))
    train(toy_config(tmp_path / "b", resume=True), progress=False)
    assert losses(tmp_path / "a" / "run") != losses(tmp_path / "b" / "run")


def test_ema_updates_once_per_optimizer_step(tmp_path):
    run = train(toy_config(tmp_path, grad_accum=4, steps=5, ckpt_every=0), progress=False)
    assert run.ema.num_updates == 5


def test_existing_run_needs_resume_and_config_must_match(tmp_path):
    train(toy_config(tmp_path, steps=2, ckpt_every=1), progress=False)
    with pytest.raises(FileExistsError, match="resume"):
        train(toy_config(tmp_path, steps=2), progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        train(toy_config(tmp_path, steps=4, lr=5e-3, resume=True), progress=False)
    run = train(toy_config(tmp_path, steps=4, resume=True), progress=False)  # more steps: fine
    assert run.step == 4


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from hirune import trainer

    real_loss = trainer.Run.loss

    def loss_nan_at_step_3(self, *args):
        out = real_loss(self, *args)
        if self.step == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer.Run, "loss", loss_nan_at_step_3)
    cfg = toy_config(tmp_path, steps=6, ckpt_every=2)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
        train(cfg, progress=False)
    ckpt = latest_checkpoint(cfg.out)
    assert ckpt is not None and ckpt.name == "step_00000002"
    tensors, _ = load_checkpoint(ckpt)
    assert all(torch.isfinite(v).all() for v in tensors["model"].values())


def test_bad_config_is_named(tmp_path):
    with pytest.raises(ValueError, match="objective"):
        train(toy_config(tmp_path, objective="elbo"), progress=False)
    with pytest.raises(ValueError, match="divisible"):
        train(toy_config(tmp_path, batch_size=30, grad_accum=4), progress=False)
    with pytest.raises(ValueError, match="valid"):
        train(toy_config(tmp_path, dataset="cifar10"), progress=False)


def test_schedule_and_data_order():
    cfg = TrainConfig(lr=1.0, warmup=10, steps=110, min_lr_ratio=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1) and lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 110) == pytest.approx(0.1)
    # every example once per epoch, the same order for the same counter
    seen = torch.cat([micro_batch_indices(10, 5, c, seed=0) for c in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    assert torch.equal(micro_batch_indices(10, 5, 3, 0), micro_batch_indices(10, 5, 3, 0))
    assert not torch.equal(micro_batch_indices(10, 5, 0, 0), micro_batch_indices(10, 5, 2, 0))


def test_image_training_writes_a_sample_grid(tmp_path):
    cfg = TrainConfig(dataset="digits", model="unet",
                      model_config={"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                                    "attention_resolutions": []},
                      steps=2, batch_size=8, log_every=1, ckpt_every=2, sample_every=2, sample_steps=2,
                      num_samples=4, out=str(tmp_path / "digits"), class_conditional=True)
    train(cfg, progress=False)
    from PIL import Image
    assert Image.open(tmp_path / "digits" / "samples" / "step_00000002.png").size[0] > 8


def test_a_moved_run_directory_resumes(tmp_path):
    """`out` is where the run lives, not part of what it computes: a run moved (or copied
    to another file system) resumes there."""
    import shutil

    train(toy_config(tmp_path / "a", steps=6), progress=False)
    shutil.move(tmp_path / "a" / "run", tmp_path / "moved")
    run = train(toy_config(tmp_path, out=str(tmp_path / "moved"), resume=True), progress=False)
    assert run.step == 12 and len(losses(tmp_path / "moved")) == 12


def test_export_is_one_file_that_sample_and_eval_read(tmp_path):
    from safetensors.torch import save_file

    from hirune.cli import main
    from hirune.export import export_weights, read_weights
    from hirune.trainer import load_run

    run = train(toy_config(tmp_path, steps=6), progress=False)
    out = export_weights(run.cfg.out)
    assert out.name == "weights.safetensors" and out.parent == tmp_path / "run"
    weights, meta = read_weights(out)
    assert meta["step"] == 6 and meta["model_config"]["hidden"] == 32
    for k, v in run.ema.shadow.items():
        assert torch.equal(weights[k], v), k
    raw = export_weights(run.cfg.out, tmp_path / "raw.safetensors", use_ema=False)
    for k, v in run.model.state_dict().items():
        assert torch.equal(read_weights(raw)[0][k], v), k
    reloaded = load_run(out)
    for k, v in load_run(run.cfg.out).model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[k], v), k
    assert main(["sample", str(out), "--n", "8", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a hirune export"):
        read_weights(tmp_path / "foreign.safetensors")
    assert main(["export", str(tmp_path / "nothing")]) == 2
