"""Subjects for DreamBooth: a few instance images of one subject that a trained model does not
draw, bound to a rare identifier ("a sks seven") by fine-tuning (`families.dreambooth`).

    crossbar-sevens   n MNIST 5k sevens with a drawn horizontal crossbar through the middle of
                      the stem: the continental seven, which plain MNIST sevens rarely are
                      (`crossbar_sevens`; detected by `evaluation.subject.has_crossbar`)

`instance_images(source)` reads the instance images of a registered subject name, a folder
of PNG/JPEG images or an .npz file (the loaders of `data.load_dataset`, every image kept).

The crossbar (`add_crossbar`, deterministic): the ink is the pixels above 0 (half
brightness); between 35% and 75% of the ink's height, the row nearest 55% where the ink is a
single run (the stem alone) takes the bar, 2 rows thick and 2 x 7 + 1 = 15 pixels wide,
centred on the stem, at full brightness.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

BAR_HALF_WIDTH = 7     # the bar spans the stem's column +-7 pixels: 15 pixels on a 28-pixel image
BAR_ROWS = 2


def ink_runs(row: Tensor) -> list[tuple[int, int]]:
    """The runs of True in a bool row (W,): [(first, last)] column pairs, left to right."""
    values = row.tolist() + [False]
    runs, start = [], None
    for i, v in enumerate(values):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - 1))
            start = None
    return runs


def add_crossbar(images: Tensor) -> Tensor:
    """Each image (N, 1, H, W) in [-1, 1] (a seven) with a crossbar through the middle of its
    stem (see the module docstring); a new tensor."""
    out = images.clone()
    height, width = images.shape[-2:]
    for img in out:
        ink = img[0] > 0
        rows = ink.any(1).nonzero().flatten()
        if len(rows) == 0:
            continue
        top, bottom = int(rows.min()), int(rows.max())
        span, wanted = bottom - top, top + 0.55 * (bottom - top)
        single = [r for r in range(top + int(0.35 * span), top + int(0.75 * span) + 1) if len(ink_runs(ink[r])) == 1]
        row = min(single, key=lambda r: abs(r - wanted)) if single else round(wanted)
        runs = ink_runs(ink[row])
        centre = round(sum((a + b) / 2 for a, b in runs) / len(runs)) if runs else width // 2
        img[0, row:min(row + BAR_ROWS, height), max(centre - BAR_HALF_WIDTH, 0):centre + BAR_HALF_WIDTH + 1] = 1.0
    return out


def crossbar_sevens(n: int = 4, split: str = "train", seed: int = 0) -> Tensor:
    """n sevens of MNIST 5k's `split` (chosen by a permutation seeded with `seed`) with a
    drawn crossbar: (n, 1, 28, 28) in [-1, 1].  The same n, split and seed give the same
    images."""
    from .images import mnist5k

    data = mnist5k(split)
    sevens = data.data[data.labels == 7]
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(sevens):
        raise ValueError(f"n={n!r} is not valid; valid: an integer from 1 to {len(sevens)} (the sevens of "
                         f"mnist5k's {split} split)")
    order = torch.randperm(len(sevens), generator=torch.Generator().manual_seed(seed))[:n]
    return add_crossbar(sevens[order])


SUBJECTS: dict[str, Callable[[], Tensor]] = {
    "crossbar-sevens": crossbar_sevens,
}


def instance_source(source: str) -> str:
    """Which reader takes `source`: "subject" (a name in SUBJECTS), "folder" or "npz"; nothing
    is read.  Anything else is refused naming the valid subjects."""
    if source in SUBJECTS:
        return "subject"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".npz" and path.is_file():
        return "npz"
    if path.exists():
        raise ValueError(f"instance={source!r} is neither a folder of images nor an .npz file; valid: a subject "
                         f"in {sorted(SUBJECTS)}, digit:D or thick:D, a folder of PNG/JPEG images or an .npz file")
    if path.suffix.lower() == ".npz" or "/" in source:
        raise FileNotFoundError(f"instance={source!r}: no such folder of PNG/JPEG images or .npz file")
    raise ValueError(f"instance={source!r} is not valid; valid: a subject in {sorted(SUBJECTS)}, digit:D or "
                     "thick:D (D in 0..9), a folder of PNG/JPEG images or an .npz file")


def instance_images(source: str) -> Tensor:
    """The instance images of a subject: a registered name (SUBJECTS), a folder of PNG/JPEG
    images or an .npz file (`data.load_dataset`'s loaders, every image: split "all");
    (N, C, H, W) in [-1, 1]."""
    from .registry import load_dataset

    if instance_source(source) == "subject":
        return SUBJECTS[source]()
    return load_dataset(Path(source), "all").data
