"""The base runs the systems' notes build on, trained at the budget with the library's presets
(`training.presets`, `training.loop.train`) into a folder the note owns."""

from __future__ import annotations

from pathlib import Path

# a UNet small enough to train a few steps in a second (the benchmark tests' size)
TINY_UNET = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
             "head_channels": 16}


def train_base(preset: str, out: Path, steps: int, **overrides) -> Path:
    """Train `preset` for `steps` steps into `out` (one checkpoint at the end, no previews or
    evaluation); returns `out`, a run directory that `training.load` reads."""
    from ...training.loop import train
    from ...training.presets import preset_config

    train(preset_config(preset, {"steps": steps, "ckpt_every": steps, "sample_every": 0, "eval_samples": 0,
                                 "out": str(out), **overrides}), progress=False)
    return out


def timed_tuning(kind: str, base: Path, settings: dict):
    """Fine-tune `base` the way `hirune train KIND BASE` does (`presets.finetune_config`), one
    optimizer step at a time so each is timed, then checkpoint; returns (trainer, step seconds)."""
    import time

    from ...training.presets import finetune_config
    from ...training.trainer import Trainer

    trainer = Trainer(finetune_config(kind, str(base), settings), distributed=False)
    data, labels = trainer.training_data()
    trainer.model.train()
    times = []
    for _ in range(trainer.cfg.steps):
        start = time.perf_counter()
        trainer.train_step(data, labels)
        times.append(time.perf_counter() - start)
    trainer.save()
    return trainer, times
