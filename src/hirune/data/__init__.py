"""Data that ships with hirune: 2-D toys generated in code and small image datasets read from
files inside installed packages (nothing is downloaded), plus loaders for user image folders
and .npz files. Every loader returns an `ArrayDataset` (images (N, C, H, W) in [-1, 1], videos
(N, C, T, H, W) in [-1, 1], or toy points (N, 2)) with fixed, documented train/test splits.

    from hirune.data import load_dataset
    train = load_dataset("mnist5k", "train")       # 4500 x 1 x 28 x 28, labels 0..9
    test = load_dataset("two_moons", "test")       # 10 000 x 2
    print(dataset_info())                          # the registered datasets

Modules: `toys` (the 2-D distributions, their scaling and exact mixture densities), `images`
(digits, mnist5k, image_folder, npz_dataset; the split rule), `registry` (DATASETS,
load_dataset, data_format, dataset_source, example_shape, dataset_info, original_dataset), `dataset`
(ArrayDataset, DataFormat, split_indices), `captions` (captions of the digits), `moving` (moving-digit
clips: moving-mnist5k, its 17-frame, two-digit and 16 x 16 variants, mnist5k-frames), `video_captions`
(captions of the clips), `dequantize`
(discrete data for likelihoods), `buckets` (aspect-ratio buckets: the bucket of an
image's ink, canvases, centred crops and pads), `sizes` (counts of examples checked: in range, no more than
there are, an array that fits in memory).
"""

from .dataset import SPLITS, ArrayDataset, DataFormat, split_indices
from .images import digits, image_folder, mnist5k, npz_dataset
from .registry import (DATASETS, DatasetSpec, data_format, dataset_buckets, dataset_info, dataset_source,
                       example_shape, load_dataset, original_dataset)
from .toys import (TOY_SPLIT_SIZES, TOYS, Toy, checkerboard, eight_gaussians, gaussian_mixture, rings,
                   swiss_roll, toy_dataset, toy_mixture, toy_seed, two_moons)

__all__ = [
    "DATASETS", "SPLITS", "TOYS", "TOY_SPLIT_SIZES", "ArrayDataset", "DataFormat", "DatasetSpec", "Toy",
    "checkerboard", "data_format", "dataset_buckets", "dataset_info", "dataset_source", "digits", "eight_gaussians",
    "example_shape", "gaussian_mixture", "image_folder", "load_dataset", "mnist5k", "npz_dataset",
    "original_dataset", "rings", "split_indices", "swiss_roll", "toy_dataset", "toy_mixture", "toy_seed",
    "two_moons",
]
