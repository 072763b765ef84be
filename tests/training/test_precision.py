"""fp16 training needs loss scaling; bf16 and fp32 do not (their scaler is a no-op)."""

from __future__ import annotations

import json

import torch

from hirune.training.presets import preset_config
from hirune.training import Trainer, train


def _first_step(tmp_path, precision: str, factor: float, scaler: bool = True) -> tuple[float, float]:
    """(loss, grad norm) of one step with the loss multiplied by `factor`."""
    cfg = preset_config("ddpm-digits", {"out": str(tmp_path / precision), "precision": precision, "batch_size": 16})
    trainer = Trainer(cfg, distributed=False)
    if not scaler:
        trainer.scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = trainer.family.loss

    def scaled(*args, **kwargs):
        out = loss(*args, **kwargs)
        out.loss = out.loss * factor
        return out

    trainer.family.loss = scaled
    return trainer.train_step(*trainer.training_data())


def test_fp16_loss_scaling_keeps_small_gradients_that_fp16_flushes_to_zero(tmp_path):
    """A loss of 1e-6 times the usual: its fp16 gradients underflow to exactly zero without
    scaling; with the scaler they are the fp32 ones (unscaled before clipping and logging)."""
    _, reference = _first_step(tmp_path, "fp32", 1e-6)
    _, scaled = _first_step(tmp_path, "fp16", 1e-6)
    _, unscaled = _first_step(tmp_path, "fp16", 1e-6, scaler=False)
    assert unscaled == 0.0                                         # the failure the scaler prevents
    assert abs(scaled / reference - 1) < 1e-3                      # not 65536x: unscaled before clipping


def test_only_fp16_scales_and_its_state_is_checkpointed(tmp_path):
    assert not Trainer(preset_config("ddpm-digits", {"out": str(tmp_path / "a"), "precision": "bf16"}),
                       distributed=False).scaler.is_enabled()
    cfg = preset_config("ddpm-digits", {"out": str(tmp_path / "h"), "precision": "fp16", "batch_size": 16,
                                        "steps": 2, "ckpt_every": 2, "sample_every": 0})
    train(cfg, progress=False)
    state = json.loads((tmp_path / "h" / "checkpoints" / "step_00000002" / "state.json").read_text())
    # two steps without overflow since the last change of the scale
    assert state["grad_scaler"]["scale"] == 2.0 ** 16 and state["grad_scaler"]["_growth_tracker"] == 2
    resumed = Trainer(cfg, distributed=False)
    resumed.load(tmp_path / "h")
    assert resumed.scaler.state_dict()["_growth_tracker"] == 2 and resumed.step == 2
