"""The training loop, for every family: a config in, a run directory out.

    trainer = train(TrainConfig.from_dict({"dataset": "two_moons", "model": "mlp", "steps": 2000,
                                           "out": "runs/moons"}))

A run directory holds config.json, metrics.jsonl (one line per logged step), loss.png (the
loss curve), tensorboard/ (with `logger=tensorboard`; `run_log.py`), checkpoints/
(safetensors + JSON, `checkpoint.py`), samples/ (preview grids) and, for runs that build on
other runs, references/ (their weights, so the run outlives them).  While it trains, the
loop owns the folder (`run_folder.own`: a lock, a check that the folder is a run,
debris removed).  `resume=True` continues the run exactly from its latest checkpoint (or
the newest complete one, saying so); a non-finite loss or gradient norm stops it with its
step number and names the last good checkpoint, which stays the latest.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..checkpoint import latest_checkpoint
from ..distributed import runtime
from .config import TrainConfig, check_config
from .loading import REFERENCES
from .run_folder import own, truncate_metrics
from .run_log import RunLog, write_loss_curve
from .trainer import Trainer, lr_at

CURVE_EVERY_S = 30.0  # loss.png is redrawn at a checkpoint at most this often (each draw: ~0.3 s)


def train(cfg: TrainConfig, stop_after: int | None = None, progress: bool = True) -> Trainer:
    """Train to cfg.steps (or stop after `stop_after` optimizer steps of this call)."""
    out = Path(cfg.out)
    check_config(cfg)  # a bad config touches no folder
    with own(out, cfg.resume, main=runtime.from_env()[0] == 0) as claim:
        trainer = Trainer(cfg)
        if claim.resume_from is not None:
            trainer.load(claim.resume_from)
        if trainer.world.main:
            truncate_metrics(out, trainer.step)
            write_config(out, cfg)
            keep_references(trainer.family, out)
        with cpu_threads(cfg.threads):
            _loop(trainer, out, stop_after, progress)
    return trainer


@contextmanager
def cpu_threads(n: int):
    """torch's intra-op CPU threads set to `n` for the duration (0: left as they are)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _loop(trainer: Trainer, out: Path, stop_after: int | None, progress: bool) -> None:
    from tqdm.auto import tqdm

    cfg, main = trainer.cfg, trainer.world.main  # only rank 0 prints, logs and writes files
    if trainer.world.distributed:
        world = trainer.world
        mesh = f", dp {world.dp_rank}/{world.dp_size} x tp {world.tp_rank}/{world.tp}" if world.tp > 1 else ""
        print(f"[hirune] rank {world.rank}/{world.size} on {trainer.device} ({world.backend}, {cfg.strategy}{mesh}"
              f"{', sp' if cfg.sp else ''})", flush=True)
        if main:
            replicas = (f"data-parallel replicas {world.dp_size} (world size {world.size} = dp {world.dp_size} x tp "
                        f"{world.tp})" if world.tp > 1 else f"world size {world.size}")
            print(f"[hirune] global batch {cfg.batch_size} = micro-batch {trainer.micro_batch} x accumulation "
                  f"{cfg.grad_accum} x {replicas}", flush=True)
    data, labels = trainer.training_data()
    end = cfg.steps if stop_after is None else min(cfg.steps, trainer.step + stop_after)
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc="train", unit="step", disable=not (progress and main))
    log = RunLog(out, cfg.logger, trainer.step) if main else None
    trainer.model.train()
    t_last, seen, drawn = time.perf_counter(), 0, -math.inf
    while trainer.step < end:
        lr = lr_at(cfg, trainer.step)
        logged, saved, previewed = _due(trainer, trainer.step + 1, end)
        try:  # read (one host sync) where the step's values are used; on a GPU the others are checked on the device
            result = trainer.train_step(data, labels, read=not trainer.defer_checks or logged or saved or previewed)
        except FloatingPointError as e:
            if log:
                log.close()
            kept = latest_checkpoint(out)
            raise FloatingPointError(f"{e}; " + (f"the last good checkpoint, {kept}, stays the latest" if kept else
                                                 "no checkpoint was written before it")) from None
        seen += cfg.batch_size
        bar.update(1)
        step = trainer.step
        if logged:
            total, grad_norm = result
            now = time.perf_counter()
            record = {"step": step, "loss": total, "lr": lr, "grad_norm": grad_norm,
                      "images_per_s": seen / max(now - t_last, 1e-9), **trainer.family.logged_terms(trainer.terms)}
            t_last, seen = now, 0
            if log:  # per-tensor gradient norms where rank 0 holds whole gradients
                log.record(record, None if trainer.sharded else trainer.model)
            bar.set_postfix(loss=f"{total:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if saved:
            trainer.save()
            # loss.png at a checkpoint at most every CURVE_EVERY_S seconds (and the last by log.close())
            if main and step < end and time.perf_counter() - drawn >= CURVE_EVERY_S:
                write_loss_curve(out)
                drawn = time.perf_counter()
        if previewed:
            written = trainer.write_preview(out / "samples" / f"step_{step:08d}.png")
            if log:
                log.preview(written, step)
    bar.close()
    if log:
        log.close()


def _due(trainer: Trainer, step: int, end: int) -> tuple[bool, bool, bool]:
    """Whether the loop logs, checkpoints and previews after reaching `step`."""
    cfg = trainer.cfg
    logged = step % cfg.log_every == 0 or step == end
    saved = bool(cfg.ckpt_every) and (step % cfg.ckpt_every == 0 or step == cfg.steps)
    previewed = (bool(cfg.sample_every) and trainer.family.has_previews
                 and (step % cfg.sample_every == 0 or step == cfg.steps))
    return logged, saved, previewed


def write_config(out: Path, cfg: TrainConfig) -> None:
    """config.json, written atomically (a temporary file renamed over it)."""
    tmp = out / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg.to_dict(), indent=1))
    tmp.replace(out / "config.json")


def keep_references(family, run_dir: Path) -> None:
    """Copy the weights of the runs this one samples through (latent diffusion's first
    stage) into RUN/references/<role>.safetensors, once, so the run loads after they are
    moved or deleted (`loading.load` prefers the copies)."""
    from .export import export_weights

    for role, path in type(family).kept_references(family.config).items():
        copy = run_dir / REFERENCES / f"{role}.safetensors"
        if not copy.exists():
            export_weights(path, copy)
