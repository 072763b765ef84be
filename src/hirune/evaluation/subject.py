"""Does a sample show the DreamBooth subject?  `has_crossbar`: a hand-written detector of the
continental seven's crossbar (`data.subjects.crossbar_sevens`), for fidelity (the share of
"a sks seven" samples with the mark) and language drift (the share of plain "a seven"
samples with it).

The ink is the pixels above 0 (half brightness) of a 28 x 28 image in [-1, 1]; lengths are
in pixels of 28 (scaled by W / 28 for other widths).  An image has a crossbar when all three
hold:

    top bar   one of the rows of the top quarter of the ink holds a run of >= 6 pixels: the
              seven's top stroke (an open-topped four has none)
    crossing  a row between 30% and 75% of the ink's height holds a run of >= 12 pixels that
              crosses a stem: within 3 rows above it (2 to 4 up) and within 3 below it (3 to
              5 down: the bar may be 2 rows thick) the ink touching the run is a single run
              of <= 7 pixels lying >= 2 pixels inside both of its ends.  A five's bowl or a
              three's middle stroke ends where the stroke above or below it is, so neither
              crosses
    stem      below the bar, >= 75% of the rows down to the ink's bottom hold a single run of
              <= 7 pixels: the stem, not a bowl (a three's lower half fails this)

Measured on mnist5k (tests/evaluation/test_subject.py): crossbar-augmented held-out sevens
92% (train split 94%), plain held-out digits 0% for every class but the sevens, whose 8%
(train 4%) are mostly sevens written with a crossbar.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.subjects import ink_runs

TOP_BAR, BAR, STEM_WIDTH, MARGIN, REACH = 6, 12, 7, 2, 3
BAND = (0.3, 0.75)
STEM_SHARE = 0.75


def has_crossbar(images: Tensor) -> Tensor:
    """(N,) bool: whether each image (N, 1, H, W) in [-1, 1] shows a crossbar through a
    seven's stem (see the module docstring)."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"has_crossbar reads 1-channel images (N, 1, H, W), got shape {tuple(images.shape)}")
    scale = images.shape[-1] / 28
    return torch.tensor([_crossbar(img[0] > 0, scale) for img in images.detach().cpu()], dtype=torch.bool)


def _crossbar(ink: Tensor, scale: float) -> bool:
    rows = ink.any(1).nonzero().flatten()
    if len(rows) == 0:
        return False
    top, bottom = int(rows.min()), int(rows.max())
    height = bottom - top + 1
    top_bar = any(b - a + 1 >= TOP_BAR * scale for r in range(top, top + max(1, height // 4) + 1)
                  for a, b in ink_runs(ink[r]))
    if not top_bar:
        return False
    for r in range(top + int(BAND[0] * height), top + int(BAND[1] * height) + 1):
        for start, end in ink_runs(ink[r]):
            if end - start + 1 < BAR * scale:
                continue
            if (_stem(ink, range(r - 2, r - 2 - REACH, -1), start, end, scale)
                    and _stem(ink, range(r + 3, r + 3 + REACH), start, end, scale)
                    and _stem_below(ink, r + 3, bottom, scale)):
                return True
    return False


def _stem(ink: Tensor, rows, start: int, end: int, scale: float) -> bool:
    """One of `rows` holds, among the ink touching columns start..end, a single narrow run
    lying >= MARGIN inside both ends."""
    for r in rows:
        if not 0 <= r < ink.shape[0]:
            continue
        touching = [(a, b) for a, b in ink_runs(ink[r]) if b >= start - 1 and a <= end + 1]
        if len(touching) == 1:
            a, b = touching[0]
            if b - a + 1 <= STEM_WIDTH * scale and a >= start + MARGIN * scale and b <= end - MARGIN * scale:
                return True
    return False


def _stem_below(ink: Tensor, first: int, bottom: int, scale: float) -> bool:
    below = [ink_runs(ink[r]) for r in range(first, bottom + 1)]
    narrow = sum(len(runs) == 1 and runs[0][1] - runs[0][0] + 1 <= STEM_WIDTH * scale for runs in below)
    return bool(below) and narrow >= STEM_SHARE * len(below)
