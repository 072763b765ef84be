"""The training loop, for every family: a config in, a run directory out.

    trainer = train(TrainConfig.from_dict({"dataset": "two_moons", "model": "mlp", "steps": 2000,
                                           "out": "runs/moons"}))

A run directory holds config.json, metrics.jsonl (one line per logged step), checkpoints/
(safetensors + JSON, `checkpoint.py`), samples/ (preview grids) and, for runs that build on
other runs, references/ (their weights, so the run outlives them).  `resume=True` continues
the run exactly from its latest checkpoint; a non-finite loss stops it with its step
number and leaves the last good checkpoint as the latest.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..checkpoint import latest_checkpoint
from .config import TrainConfig
from .loading import REFERENCES
from .trainer import Trainer, lr_at


def train(cfg: TrainConfig, stop_after: int | None = None, progress: bool = True) -> Trainer:
    """Train to cfg.steps (or stop after `stop_after` optimizer steps of this call)."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    if latest_checkpoint(out) is not None and not cfg.resume:
        raise FileExistsError(f"{out} already holds a run; pass resume=true to continue it or choose another out=")
    trainer = Trainer(cfg)
    main = trainer.world.main  # only rank 0 prints, logs and writes files
    if latest_checkpoint(out) is not None:
        trainer.load(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        keep_references(trainer.family, out)
    if trainer.world.distributed:
        print(f"[hirune] rank {trainer.world.rank}/{trainer.world.size} on {trainer.device} "
              f"({trainer.world.backend}, {cfg.strategy})", flush=True)
        if main:
            print(f"[hirune] global batch {cfg.batch_size} = micro-batch {trainer.micro_batch} x accumulation "
                  f"{cfg.grad_accum} x world size {trainer.world.size}", flush=True)
    data, labels = trainer.training_data()
    end = cfg.steps if stop_after is None else min(cfg.steps, trainer.step + stop_after)
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc="train", unit="step", disable=not (progress and main))
    log = open(out / "metrics.jsonl", "a") if main else None
    trainer.model.train()
    t_last, seen = time.perf_counter(), 0
    while trainer.step < end:
        lr = lr_at(cfg, trainer.step)
        try:
            total, grad_norm = trainer.train_step(data, labels)
        except FloatingPointError as e:
            if log:
                log.close()
            raise FloatingPointError(f"{e}; the last good checkpoint is kept in {out / 'checkpoints'}") from None
        seen += cfg.batch_size
        bar.update(1)
        step = trainer.step
        if step % cfg.log_every == 0 or step == end:
            now = time.perf_counter()
            record = {"step": step, "loss": total, "lr": lr, "grad_norm": grad_norm,
                      "images_per_s": seen / max(now - t_last, 1e-9), **trainer.family.logged_terms(trainer.terms)}
            t_last, seen = now, 0
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{total:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            trainer.save()
        if cfg.sample_every and trainer.family.has_previews and (step % cfg.sample_every == 0 or step == cfg.steps):
            trainer.write_preview(out / "samples" / f"step_{step:08d}.png")
    bar.close()
    if log:
        log.close()
    return trainer


def keep_references(family, run_dir: Path) -> None:
    """Copy the weights of the runs this one samples through (latent diffusion's first
    stage) into RUN/references/<role>.safetensors, once, so the run loads after they are
    moved or deleted (`loading.load` prefers the copies)."""
    from .export import export_weights

    for role, path in type(family).reference_paths(family.config, training=False).items():
        copy = run_dir / REFERENCES / f"{role}.safetensors"
        if not copy.exists():
            export_weights(path, copy)
