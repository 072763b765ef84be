"""What rank 0 writes about a run as it trains, beside its checkpoints and previews.

- metrics.jsonl: one JSON line per logged step (loss, lr, gradient norm, images/s, the
  family's named loss terms), always.
- loss.png: the loss curve (and the gradient norm) over every logged step of the run, resumed
  parts included, redrawn at checkpoints (at most every `loop.CURVE_EVERY_S` seconds) and at the
  end; matplotlib, no extra needed.
- tensorboard/ (`logger=tensorboard`, the extra `hirune[tensorboard]`): the same scalars under
  train/, each preview grid as an image, and at every logged step a histogram of the
  gradient norms of the parameter tensors (one norm per tensor, after clipping; left out for
  sharded runs, whose ranks hold pieces of each tensor).  A resumed run purges the events past
  the step it resumes from, so no step is drawn twice.  `tensorboard --logdir RUN/tensorboard`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LOGGERS = ("jsonl", "tensorboard")
LOSS_CURVE = "loss.png"
TENSORBOARD = "tensorboard"


def check_logger(logger: str) -> None:
    """ValueError for an unknown logger, or tensorboard without its package (naming the extra)."""
    if logger not in LOGGERS:
        raise ValueError(f"logger={logger!r} is not valid; valid: {list(LOGGERS)}")
    if logger == "tensorboard":
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise ValueError("logger=tensorboard needs the tensorboard package: pip install 'hirune[tensorboard]' "
                             "(or logger=jsonl)")


class RunLog:
    """Rank 0's log of a run in `out`, from `step` on (the step it starts or resumes at)."""

    def __init__(self, out: Path, logger: str, step: int):
        self.out = out
        self.jsonl = open(out / "metrics.jsonl", "a")
        self.board = None
        if logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run: events past `step` were logged by the run that died after its checkpoint
            self.board = SummaryWriter(str(out / TENSORBOARD), purge_step=step + 1 if step else None)

    def record(self, record: dict, model: torch.nn.Module | None = None) -> None:
        """One logged step: the JSON line; on TensorBoard its numbers, and the gradient norms of
        `model`'s parameter tensors as a histogram (None: no histogram)."""
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.board is None:
            return
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.board.add_scalar(f"train/{key}", value, step)
        if model is not None:
            grads = [p.grad.detach().float() for p in model.parameters() if p.grad is not None]
            if grads:
                self.board.add_histogram("gradients/norm_per_tensor", torch.stack(torch._foreach_norm(grads)), step)

    def preview(self, path: Path | None, step: int) -> None:
        """A preview grid just written to `path` (a PNG; a GIF's first frame), as a TensorBoard image."""
        if self.board is None or path is None or not Path(path).exists():
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            self.board.add_image("samples", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.jsonl.close()
        if self.board is not None:
            self.board.close()
        write_loss_curve(self.out)


def write_loss_curve(out: Path) -> Path | None:
    """RUN/loss.png from RUN/metrics.jsonl: the loss (log scale where it stays positive) and the
    gradient norm against the step, written atomically; None when nothing is logged yet."""
    from .run_folder import logged_records

    records = logged_records(out)
    if not records:
        return None
    from matplotlib.figure import Figure  # drawn without pyplot: no global figure state, no backend switch

    steps = [r["step"] for r in records]
    fig = Figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "grad_norm")):
        values = [r.get(key) for r in records]
        points = [(s, v) for s, v in zip(steps, values) if isinstance(v, (int, float))]
        if points:
            ax.plot(*zip(*points), lw=1)
            if all(v > 0 for _, v in points):
                ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.16, top=0.9, wspace=0.32)  # room for log-scale labels
    tmp = out / f".{LOSS_CURVE}.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(out / LOSS_CURVE)
    return out / LOSS_CURVE
