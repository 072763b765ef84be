"""A few images of one subject (an "instance") and their captions, for teaching a trained
text-to-image run a new word (textual inversion) or fine-tuning it on them.

    instance=crossbar-sevens   a registered subject (`data.subjects.SUBJECTS`)
    instance=digit:7       the first 5 train-split sevens of the run's dataset
    instance=thick:3       the 5 train-split threes with the most ink (`captions.ink_amount`)
    instance=DIR           every PNG under DIR (scaled to the run's image size)
    instance=FILE.npz      its "images" array
    (digit:D:N, thick:D:N: N images instead of 5)

Captions (textual inversion): one of `TEMPLATES` filled with the placeholder ("an image of
<s*>", as Gal et al.'s templates).  Without a placeholder the images are DreamBooth's, whose
prompts are its settings (`IDENTIFIER_CAPTION`, "a sks digit", is the benchmarks' identifier
for a subject of any digit).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .captions import ink_amount

TEMPLATES = (
    "an image of {}",
    "a picture of a {}",
    "a photo of {}",
    "a drawing of a {}",
    "a handwritten {}",
    "the {}",
)
IDENTIFIER_CAPTION = "a sks digit"
DEFAULT_COUNT = 5
BUILT_IN = ("digit", "thick")


def check_instance(spec: str) -> None:
    """Refuse, before anything is read, an instance that is none of the module docstring's forms."""
    from .subjects import instance_source

    kind, _, rest = spec.partition(":")
    if kind in BUILT_IN and rest:
        _digit_and_count(spec, rest)
    else:
        instance_source(spec)


def instance_images(spec: str, train: Tensor, labels: Tensor | None) -> Tensor:
    """The instance's images (N, C, H, W) in [-1, 1] for `spec` (see the module docstring),
    given the run's training images (M, C, H, W) and labels (M,)."""
    from .subjects import SUBJECTS

    if spec in SUBJECTS:
        return SUBJECTS[spec]()
    kind, _, rest = spec.partition(":")
    if kind in BUILT_IN and rest:
        digit, count = _digit_and_count(spec, rest)
        if labels is None:
            raise ValueError(f"instance={spec!r} is not valid: the dataset has no labels; valid: a folder of PNGs "
                             "or an .npz file")
        mine = torch.nonzero(labels == digit).flatten()
        if kind == "thick":
            mine = mine[torch.argsort(ink_amount(train[mine]), descending=True, stable=True)]
        if len(mine) < count:
            raise ValueError(f"instance={spec!r} is not valid: the training split has {len(mine)} images of {digit}")
        return train[mine[:count]].clone()
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"instance={spec!r} is not valid; valid: digit:D or thick:D (D in 0..9, optionally :N "
                         "images), a folder of PNGs, or an .npz file")
    from .images import image_folder, npz_dataset

    shape = tuple(train.shape[1:])
    images = (npz_dataset(path) if path.suffix == ".npz" else
              image_folder(path, size=shape[1:], channels=shape[0], labels=False)).data
    if tuple(images.shape[1:]) != shape:
        raise ValueError(f"instance={spec!r} is not valid: its images are {tuple(images.shape[1:])}; valid: images "
                         f"of the run's shape {shape}")
    return images.float()


def _digit_and_count(spec: str, rest: str) -> tuple[int, int]:
    digit, _, count = rest.partition(":")
    try:
        digit_value, count_value = int(digit), int(count) if count else DEFAULT_COUNT
    except ValueError:
        digit_value = count_value = -1
    if not 0 <= digit_value <= 9 or count_value < 1:
        raise ValueError(f"instance={spec!r} is not valid; valid: digit:D or thick:D with D in 0..9, optionally "
                         ":N images (N >= 1)")
    return digit_value, count_value


class InstanceCaptioner:
    """The captions of instance images: `Captioner.captions`' interface (idx, template, drop),
    template k -> `templates[k % len]` filled with `word`; dropped ones are ""."""

    def __init__(self, word: str = "", templates: tuple[str, ...] = TEMPLATES):
        self.word, self.templates = word, templates if word else (IDENTIFIER_CAPTION,)

    def captions(self, idx: Tensor, template: Tensor, drop: Tensor | None = None) -> list[str]:
        dropped = drop.cpu().tolist() if drop is not None else [False] * len(idx)
        return ["" if d else self.templates[k % len(self.templates)].format(self.word)
                for k, d in zip(template.cpu().tolist(), dropped)]
