"""The training loop: exact resume, EMA once per optimizer step, faults handled."""

from __future__ import annotations

import json

import pytest
import torch

from hirune.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from hirune.training import TrainConfig, Trainer, lr_at, micro_batch_indices, train


def toy_config(tmp_path, **kw) -> TrainConfig:
    base = dict(dataset="two_moons", model="mlp", model_config={"hidden": 32, "depth": 2, "dropout": 0.1},
                process="ddpm", process_config={"T": 100}, steps=12, batch_size=32, grad_accum=2,
                lr=1e-3, warmup=3, log_every=1, ckpt_every=6, sample_every=0, out=str(tmp_path / "run"))
    base.update(kw)
    return TrainConfig.from_dict(base)


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
    (ckpt / "state.sha256").write_text(_sha256(ckpt / "state.json"))  # a forgery that passes every check
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
    from hirune.families.diffusion import Diffusion

    real_loss = Diffusion.loss

    def loss_nan_at_step_3(self, forward, batch, draw, step):
        out = real_loss(self, forward, batch, draw, step)
        if step == 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Diffusion, "loss", loss_nan_at_step_3)
    cfg = toy_config(tmp_path, steps=6, ckpt_every=2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 3; the last good checkpoint, "
                                                 r".*step_00000002, stays the latest"):
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
    cfg = TrainConfig.from_dict(dict(dataset="digits", model="unet",
                                     model_config={"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                                                   "attention_resolutions": []},
                                     steps=2, batch_size=8, log_every=1, ckpt_every=2, sample_every=2,
                                     sample_steps=2, num_samples=4, out=str(tmp_path / "digits"),
                                     class_conditional=True))
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
    from hirune.training.export import export_weights, read_weights
    from hirune.training.loading import load

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
    reloaded = load(out)
    for k, v in load(run.cfg.out).model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[k], v), k
    assert main(["sample", str(out), "--n", "8", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    save_file({"w": torch.ones(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a hirune export"):
        read_weights(tmp_path / "foreign.safetensors")
    assert main(["export", str(tmp_path / "nothing")]) == 2


# --- the loop is shared by every family ------------------------------------------------------
# one tiny run of each family: (its config keys, beside FAMILY_COMMON)
FAMILY_RUNS = {
    "diffusion": dict(dataset="two_moons", model="mlp", model_config={"hidden": 16, "depth": 2, "dropout": 0.1},
                      process="ddpm", process_config={"T": 100}),
    "normalizing_flow": dict(family="normalizing_flow", dataset="two_moons", model="normalizing_flow",
                             model_config={"kind": "maf", "steps": 2, "hidden": 16}),
    "autoencoder": dict(family="autoencoder", dataset="digits", model="kl_autoencoder",
                        model_config={"size": "f2", "channels": 4, "z_channels": 2}),
    "classifier": dict(family="classifier", dataset="digits", model="classifier",
                       model_config={"channels": 4, "channel_mult": [1, 2], "attention_resolutions": [2],
                                     "head_channels": 4}),
}
FAMILY_COMMON = dict(steps=4, batch_size=8, grad_accum=2, lr=1e-3, warmup=2, log_every=1, ckpt_every=2,
                     sample_every=0, ema_decay=0.99)


def family_config(family: str, out, **kw) -> TrainConfig:
    return TrainConfig.from_dict({**FAMILY_COMMON, **FAMILY_RUNS[family], "out": str(out), **kw})


def metric_records(run_dir) -> list[dict]:
    """metrics.jsonl without its timings: loss, lr, grad norm and the family's logged terms."""
    lines = open(f"{run_dir}/metrics.jsonl").read().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_one_optimizer_step_of_every_family_moves_the_weights_and_the_ema(family, tmp_path):
    from hirune.training import Trainer

    trainer = Trainer(family_config(family, tmp_path / "run"), distributed=False)
    assert trainer.family.name == family
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    shadow = {n: s.clone() for n, s in trainer.ema.shadow.items()}
    assert shadow.keys() == before.keys() and all(torch.equal(shadow[n], before[n]) for n in before)
    decay = trainer.ema.current_decay()
    trainer.model.train()
    loss, grad_norm = trainer.train_step(*trainer.training_data())
    assert trainer.step == 1 and trainer.ema.num_updates == 1
    assert torch.isfinite(torch.tensor(loss)) and grad_norm > 0
    after = dict(trainer.model.named_parameters())
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert moved, "no weight changed"
    for n, p in after.items():  # AdamW moves every weight that has a gradient
        if p.grad is not None and p.grad.abs().sum() > 0:
            assert n in moved, n
    for n in before:  # the EMA took one step from the initial weights towards the new ones
        expected = torch.lerp(shadow[n], after[n].detach(), 1 - decay)
        torch.testing.assert_close(trainer.ema.shadow[n], expected, rtol=1e-6, atol=1e-7, msg=n)
    assert any(not torch.equal(trainer.ema.shadow[n], shadow[n]) for n in moved)
    assert all(not torch.equal(trainer.ema.shadow[n], after[n]) for n in moved)  # an average, not a copy


@pytest.mark.parametrize("family", list(FAMILY_RUNS))
def test_every_family_resumes_bitwise(family, tmp_path):
    """4 steps straight = 2 steps, a checkpoint, a new process resuming to 4: the same logged
    losses (and terms) and bitwise the same weights and EMA."""
    straight = train(family_config(family, tmp_path / "a"), progress=False)
    train(family_config(family, tmp_path / "b"), stop_after=2, progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "step_00000002"
    resumed = train(family_config(family, tmp_path / "b", resume=True), progress=False)
    assert resumed.step == straight.step == 4
    assert metric_records(tmp_path / "a") == metric_records(tmp_path / "b")
    assert len(metric_records(tmp_path / "b")) == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight.ema.shadow.keys() == resumed.ema.shadow.keys()
    for k in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]), k
    # and the weights moved over the run: the comparison is not of two untrained networks
    initial = load_checkpoint(tmp_path / "b" / "checkpoints" / "step_00000002")[0]["model"]
    assert any(not torch.equal(initial[k], v) for k, v in a.items())


def accumulation_run(out, grad_accum: int) -> tuple[list[dict], dict]:
    cfg = toy_config(out, model_config={"hidden": 32, "depth": 2, "dropout": 0.0}, steps=4, batch_size=16,
                     grad_accum=grad_accum, warmup=0, ckpt_every=0)
    run = train(cfg, progress=False)
    records = [{k: r[k] for k in ("loss", "grad_norm")} for r in metric_records(cfg.out)]
    return records, {k: v.clone() for k, v in run.model.state_dict().items()}


def assert_same_steps(a: tuple[list[dict], dict], b: tuple[list[dict], dict], tol: float = 1e-6) -> None:
    (ra, wa), (rb, wb) = a, b
    assert len(ra) == len(rb) == 4
    for x, y in zip(ra, rb):
        for key in x:
            assert abs(x[key] - y[key]) <= tol * max(1.0, abs(x[key])), (key, ra, rb)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=tol, atol=tol, msg=k)


def test_gradient_accumulation_equals_the_whole_batch(tmp_path):
    """grad_accum=2 x 8 = one micro-batch of 16: the same random draws (drawn for the whole
    batch), each micro-batch's loss divided by 2: the same losses, gradient norms, weights."""
    assert_same_steps(accumulation_run(tmp_path / "one", 1), accumulation_run(tmp_path / "two", 2))


@pytest.mark.parametrize("broken", ["loss", "gradients"])
def test_accumulation_parity_catches_undivided_micro_batches(broken, tmp_path, monkeypatch):
    """Harness: micro-batch losses not divided by grad_accum (the logged loss and the
    gradients, or the gradients alone) fail the comparison."""
    import hirune.training.trainer as T
    from hirune.families.diffusion import Diffusion

    reference = accumulation_run(tmp_path / "one", 1)
    if broken == "loss":  # the trainer's division by grad_accum undone in both places
        real_loss = Diffusion.loss

        def undivided(self, forward, batch, draw, step):
            out = real_loss(self, forward, batch, draw, step)
            out.loss = out.loss * self.cfg.grad_accum
            return out

        monkeypatch.setattr(Diffusion, "loss", undivided)
    else:  # backward of the undivided loss, the logged loss still right
        real_scaler = T.make_grad_scaler

        def undivided_scaler(device, fp16, distributed):
            scaler = real_scaler(device, fp16, distributed)
            scale = scaler.scale
            scaler.scale = lambda outputs: scale(outputs) * 2
            return scaler

        monkeypatch.setattr(T, "make_grad_scaler", undivided_scaler)
    with pytest.raises(AssertionError):
        assert_same_steps(reference, accumulation_run(tmp_path / "two", 2))


def test_threads_sets_torchs_cpu_threads_for_the_run_and_restores_them(tmp_path, monkeypatch):
    seen, real = [], Trainer.train_step

    def step(self, *a, **kw):
        seen.append(torch.get_num_threads())
        return real(self, *a, **kw)
    monkeypatch.setattr(Trainer, "train_step", step)
    before = torch.get_num_threads()
    train(toy_config(tmp_path / "a", steps=2, threads=1), progress=False)
    train(toy_config(tmp_path / "b", steps=2, threads=3), progress=False)
    assert seen == [1, 1, 3, 3] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        train(toy_config(tmp_path / "c", threads=-1), progress=False)
