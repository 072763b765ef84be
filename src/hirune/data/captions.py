"""Captions for the digit sets, written from each image's label and two attributes
measured on the image itself: "a thick handwritten seven, slanted left".

    thickness  the ink (mean brightness) against the other images of the same digit:
               the lightest quarter is "thin", the heaviest quarter "thick"
    slant      the shear of the ink, sum w dr dc / sum w dr^2 over the pixels (rows r
               downwards, columns c, both centred on the ink's centre of mass): a digit
               whose top leans right has negative shear.  Beyond +-SLANT it is "slanted
               left / right", otherwise upright (and the caption says nothing)

Training draws one of `TRAIN_TEMPLATES` per example and step; `HELD_OUT_TEMPLATES` are
phrasings never seen in training (other words, other order), for measuring whether a
text-to-image model follows the meaning rather than the string.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SLANT = 0.2

# per attribute value (0, 1, 2): thickness thin / regular / thick, slant left / upright / right
_ADJ = ("thin ", "", "thick ")
_STROKES = (" in thin strokes", "", " in thick strokes")
_SLANT = (", slanted left", "", ", slanted right")
_LEAN = (" leaning to the left", "", " leaning to the right")
_WEIGHT = (" lightly", "", " heavily")

TRAIN_TEMPLATES = (
    "a {adj}handwritten {name}{slant}",
    "the digit {digit}{strokes}{slant}",
    "a {adj}{name}{slant}",
    "handwritten number {name}{strokes}",
)
HELD_OUT_TEMPLATES = (
    "an image of a {adj}{name}{lean}",
    "the number {digit} drawn{weight}",
    "a picture showing the digit {name}",
)


def caption(label: int, thickness: int = 1, slant: int = 1, template: str = TRAIN_TEMPLATES[0]) -> str:
    """The caption of one image: label 0..9, thickness and slant 0 / 1 / 2 (see above)."""
    return template.format(name=NAMES[label], digit=label, adj=_ADJ[thickness], strokes=_STROKES[thickness],
                           slant=_SLANT[slant], lean=_LEAN[slant], weight=_WEIGHT[thickness])


def words(text: str) -> list[str]:
    """Lower-case words and numbers: the unit of the word tokenizer (`hirune.text`)."""
    return re.findall(r"[a-z]+|[0-9]+", text.lower())


def training_vocabulary() -> list[str]:
    """Every word a training caption can contain, sorted (held-out phrasings add others)."""
    seen = {w for label in range(10) for th in range(3) for sl in range(3) for tpl in TRAIN_TEMPLATES
            for w in words(caption(label, th, sl, tpl))}
    return sorted(seen)


def ink_amount(images: Tensor) -> Tensor:
    """The ink of each image (N, 1, H, W) in [-1, 1]: its mean brightness, (x + 1) / 2
    clamped at 0, averaged over the pixels; (N,) float64.  Thickness is measured by it."""
    return ((images[:, 0].double() + 1) / 2).clamp_min(0).mean(dim=(1, 2))


def attributes(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(thickness, slant), each (N,) int64 in {0, 1, 2}, of images (N, 1, H, W) in [-1, 1]
    with labels (N,).  Thickness quartiles are per digit, over the images given."""
    w = ((images[:, 0].double() + 1) / 2).clamp_min(0)                      # ink weights (N, H, W)
    ink = w.mean(dim=(1, 2))                                                 # = ink_amount(images)
    rows = torch.arange(w.shape[1], dtype=w.dtype)[None, :, None]
    cols = torch.arange(w.shape[2], dtype=w.dtype)[None, None, :]
    mass = w.sum(dim=(1, 2)).clamp_min(1e-12)
    r0 = (w * rows).sum(dim=(1, 2)) / mass
    c0 = (w * cols).sum(dim=(1, 2)) / mass
    dr, dc = rows - r0[:, None, None], cols - c0[:, None, None]
    shear = (w * dr * dc).sum(dim=(1, 2)) / (w * dr * dr).sum(dim=(1, 2)).clamp_min(1e-12)
    thickness = torch.ones(len(images), dtype=torch.long)
    for digit in labels.unique():
        mine = labels == digit
        lo, hi = torch.quantile(ink[mine], torch.tensor([0.25, 0.75], dtype=ink.dtype))
        thickness[mine & (ink < lo)] = 0
        thickness[mine & (ink > hi)] = 2
    slant = torch.ones(len(images), dtype=torch.long)
    slant[shear > SLANT] = 0       # the top leans left
    slant[shear < -SLANT] = 2      # the top leans right
    return thickness, slant


class Captioner:
    """Captions for the examples of a labelled image dataset (its attributes measured once)."""

    def __init__(self, images: Tensor, labels: Tensor | None):
        if labels is None:
            raise ValueError("text conditioning writes captions from the labels; this dataset has none "
                             "(use digits or mnist5k)")
        if images.dim() != 4 or images.shape[1] != 1:
            raise ValueError(f"captions are written for 1-channel digit images, got shape {tuple(images.shape)}")
        self.labels = labels.long().cpu()
        self.thickness, self.slant = attributes(images.cpu(), self.labels)

    def captions(self, idx: Tensor, template: Tensor, drop: Tensor | None = None,
                 templates: tuple[str, ...] = TRAIN_TEMPLATES) -> list[str]:
        """The captions of examples `idx` (B,) with template indices (B,); where `drop` is
        True the caption is empty (the null condition of classifier-free guidance)."""
        idx, template = idx.cpu().tolist(), template.cpu().tolist()
        dropped = drop.cpu().tolist() if drop is not None else [False] * len(idx)
        return ["" if d else caption(int(self.labels[i]), int(self.thickness[i]), int(self.slant[i]),
                                     templates[k % len(templates)])
                for i, k, d in zip(idx, template, dropped)]
