"""Unread training steps (a GPU's steps between logs): no host sync in the step, the non-finite
check kept on the device and raised at the next read, naming the first bad step; the same
weights as reading every step; never a checkpoint of weights a bad step touched."""

from __future__ import annotations

import pytest
import torch

from hirune.checkpoint import latest_checkpoint, load_checkpoint
from hirune.families.diffusion import Diffusion
from hirune.training import TrainConfig, Trainer, train


def toy_config(tmp_path, **kw) -> TrainConfig:
    base = dict(dataset="two_moons", model="mlp", model_config={"hidden": 32, "depth": 2, "dropout": 0.1},
                process="ddpm", process_config={"T": 100}, steps=12, batch_size=32, grad_accum=2,
                lr=1e-3, warmup=3, log_every=1, ckpt_every=6, sample_every=0, out=str(tmp_path / "run"))
    return TrainConfig.from_dict({**base, **kw})


def nan_at(monkeypatch, bad_step: int) -> None:
    real = Diffusion.loss

    def loss(self, forward, batch, draw, step):
        out = real(self, forward, batch, draw, step)
        if step == bad_step:
            out.loss = out.loss * float("nan")
        return out
    monkeypatch.setattr(Diffusion, "loss", loss)


def trainer(tmp_path, **kw) -> tuple[Trainer, torch.Tensor, torch.Tensor | None]:
    t = Trainer(toy_config(tmp_path, ckpt_every=0, **kw), distributed=False)
    data, labels = t.training_data()
    t.model.train()
    return t, data, labels


def test_unread_steps_train_exactly_as_read_ones_and_the_read_gives_the_same_values(tmp_path):
    every, data, labels = trainer(tmp_path / "a")
    read = [every.train_step(data, labels) for _ in range(6)]
    some, _, _ = trainer(tmp_path / "b")  # built after: the global RNG (dropout) starts where every's did
    for step in range(6):
        out = some.train_step(data, labels, read=step in (2, 5))
        assert (out is None) == (step not in (2, 5))
        if out is not None:
            assert out == read[step]
    for (name, a), b in zip(every.model.state_dict().items(), some.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(torch.equal(every.ema.shadow[k], some.ema.shadow[k]) for k in every.ema.shadow)


def test_unread_steps_make_no_host_read(tmp_path, monkeypatch):
    """What would sync a GPU from Python -- item, tolist, a tensor's truth value -- is not called in an
    unread step of the diffusion family (the GPU suite checks every sync with CUDA's sync debug mode)."""
    t, data, labels = trainer(tmp_path)
    t.optimizer = torch.optim.AdamW(t.model.parameters(), lr=t.cfg.lr, fused=True)  # a GPU's (CPU AdamW reads its step)
    t.train_step(data, labels)  # the first step builds what is built once
    calls = []
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, method)

        def counted(self, *a, _real=real, _name=method, **kw):
            calls.append(_name)
            return _real(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, method, counted)
    t.train_step(data, labels, read=False)
    t.train_step(data, labels, read=False)
    assert calls == []
    t.train_step(data, labels)
    assert calls == ["tolist"]  # a read step: one


def test_a_bad_unread_step_is_raised_at_the_next_read_naming_it(tmp_path, monkeypatch):
    nan_at(monkeypatch, 2)
    t, data, labels = trainer(tmp_path)
    for _ in range(4):
        assert t.train_step(data, labels, read=False) is None
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 2 \(found at step 4"):
        t.train_step(data, labels)
    t2, data, labels = trainer(tmp_path / "save")
    for _ in range(3):
        t2.train_step(data, labels, read=False)
    with pytest.raises(FloatingPointError, match="at step 2"):
        t2.save()
    assert latest_checkpoint(t2.cfg.out) is None


def test_the_loop_on_a_gpu_reads_only_logged_and_saved_steps_and_keeps_the_last_good_checkpoint(tmp_path,
                                                                                                   monkeypatch):
    real_init, reads = Trainer.__init__, []

    def deferring(self, *a, **kw):  # the loop as it runs on a GPU
        real_init(self, *a, **kw)
        self.defer_checks = True
    real_step = Trainer.train_step

    def step(self, data, labels, read=True):
        reads.append(read)
        return real_step(self, data, labels, read)
    monkeypatch.setattr(Trainer, "__init__", deferring)
    monkeypatch.setattr(Trainer, "train_step", step)
    run = train(toy_config(tmp_path / "a", steps=8, log_every=4, ckpt_every=6), progress=False)
    assert reads == [False, False, False, True, False, True, False, True] and run.step == 8
    nan_at(monkeypatch, 4)
    cfg = toy_config(tmp_path / "b", steps=8, log_every=4, ckpt_every=2)
    with pytest.raises(FloatingPointError, match=r"non-finite loss \(nan\) at step 4 \(found at step 5.*"
                                                 r"step_00000004, stays the latest"):
        train(cfg, progress=False)
    ckpt = latest_checkpoint(cfg.out)
    assert ckpt.name == "step_00000004"
    assert all(torch.isfinite(v).all() for v in load_checkpoint(ckpt)[0]["model"].values())

