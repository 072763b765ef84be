"""The in-memory dataset every loader returns, and the one rule that splits train from test."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class DataFormat:
    """What a model needs to know of its data without holding it: the dataset's name, its
    kind ("image", "video" or "toy"), the shape of one example, its number of classes (0: none) and
    its quantization `levels` (None: continuous), and for a dataset of aspect-ratio buckets
    (`data.buckets`) the buckets' (H, W), `shape` then being the canvas they all fit in.
    Saved with every checkpoint, so a trained run loads without reading its dataset."""

    name: str
    kind: str
    shape: tuple[int, ...]
    num_classes: int = 0
    levels: int | None = None
    buckets: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_dict(cls, values: dict) -> DataFormat:
        buckets = tuple(tuple(b) for b in values.get("buckets", ()))
        return cls(**{**values, "shape": tuple(values["shape"]), "buckets": buckets})

    def to_dict(self) -> dict:
        """Plain data for a checkpoint; `buckets` only where there are some (so the state of
        every other run is what it always was)."""
        out = dataclasses.asdict(self)
        if not self.buckets:
            del out["buckets"]
        return out


@dataclass(eq=False)
class ArrayDataset(torch.utils.data.Dataset):
    """One split of a dataset, held in memory.

    data: (N, C, H, W) float32 images scaled to [-1, 1] (kind "image"), (N, C, T, H, W) float32
        videos of T frames in [-1, 1] (kind "video"), or (N, 2) float32 points (kind "toy");
        also readable as `.images` / `.videos` / `.points`.
    labels: (N,) int64 class indices in [0, num_classes), or None (unlabelled).
    num_classes: the number of classes; 0 when unlabelled.
    indices: (N,) int64 position of each example in the full dataset (file order), or None.
    levels: how many evenly spaced values a pixel takes in [-1, 1] (17 for the 0..16
        digits, 256 for 8-bit images); likelihoods dequantize with it.  None for toys and
        for continuous-valued images (float .npz arrays off the 8-bit grid).
    buckets, bucket: a dataset of aspect-ratio buckets (`data.buckets`): the buckets' (H, W),
        and (N,) int64 each example's bucket, its canvas centred in `data`; else () and None.
    attributes: per-example integer attributes, each (N,) int64 (a moving digit's direction,
        speed, start position: `data.moving`), or None.
    Indexing gives (x, label), label -1 when unlabelled, so a DataLoader sees one structure.
    """

    name: str
    kind: str
    data: Tensor
    labels: Tensor | None
    num_classes: int
    split: str
    source: str
    indices: Tensor | None = None
    class_names: tuple[str, ...] | None = None
    levels: int | None = None
    buckets: tuple[tuple[int, int], ...] = ()
    bucket: Tensor | None = None
    attributes: dict[str, Tensor] | None = None

    @property
    def images(self) -> Tensor:
        if self.kind != "image":
            raise AttributeError(f"{self.name} holds {self.kind} data, not images; use .data")
        return self.data

    @property
    def videos(self) -> Tensor:
        if self.kind != "video":
            raise AttributeError(f"{self.name} holds {self.kind} data, not videos; use .data")
        return self.data

    @property
    def points(self) -> Tensor:
        if self.kind != "toy":
            raise AttributeError(f"{self.name} holds {self.kind} data, not points; use .data")
        return self.data

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W), (C, T, H, W) or (2,)."""
        return tuple(self.data.shape[1:])

    @property
    def format(self) -> DataFormat:
        return DataFormat(self.name, self.kind, self.shape, self.num_classes, self.levels, self.buckets)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        label = self.labels[i] if self.labels is not None else torch.tensor(-1)
        return self.data[i], label


def check_split(split: str, valid: Sequence[str] = SPLITS) -> str:
    if split not in valid:
        raise ValueError(f"unknown split {split!r}; valid: {list(valid)}")
    return split


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def split_indices(keys: Sequence[str], labels: np.ndarray | None,
                  test_count: Callable[[int], int], split: str) -> np.ndarray:
    """Indices (increasing) of one split, stratified by label.

    Within each class (all examples, when unlabelled) the examples are ranked by the 64-bit
    BLAKE2b hash of their key, and the first `test_count(class size)` form the test split.
    The rule uses no random generator, so the split is the same on every machine and
    library version, and an example's key alone (not the file order) decides its rank.
    """
    check_split(split)
    n = len(keys)
    if split == "all":
        return np.arange(n)
    groups = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(labels)
    hashes = np.array([_hash(k) for k in keys], dtype=np.uint64)
    is_test = np.zeros(n, dtype=bool)
    for c in np.unique(groups):
        members = np.flatnonzero(groups == c)
        ranked = members[np.argsort(hashes[members], kind="stable")]
        is_test[ranked[:test_count(len(members))]] = True
    chosen = np.flatnonzero(is_test if split == "test" else ~is_test)
    if len(chosen) == 0:
        raise ValueError(f"the {split} split of these {n} examples is empty (too few examples "
                         "per class to hold some out); use split='all'")
    return chosen
