"""hirune.data.dataset: ArrayDataset (items and DataLoader batches, the images / points views
by kind, `format`), DataFormat (equality, the dict round trip of checkpoints) and
split_indices (the split depends on the keys, not on their order)."""

import dataclasses

import numpy as np
import pytest
import torch

from hirune.data import ArrayDataset, DataFormat, digits, load_dataset, split_indices


def test_array_dataset_items_and_kinds():
    ds = digits("test")
    x, y = ds[3]
    assert x.shape == (1, 8, 8) and int(y) == int(ds.labels[3])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=7)))
    assert batch[0].shape == (7, 1, 8, 8) and batch[1].dtype == torch.int64
    toy = load_dataset("two_moons", "test", size=5)
    assert int(toy[0][1]) == -1
    with pytest.raises(AttributeError, match="not images"):
        toy.images
    with pytest.raises(AttributeError, match="not points"):
        ds.points
    assert isinstance(ds, ArrayDataset)


def test_split_depends_on_keys_not_order():
    keys = [f"k{i}" for i in range(200)]
    labels = np.arange(200) % 4
    test = {keys[i] for i in split_indices(keys, labels, lambda n: n // 10, "test")}
    perm = np.random.default_rng(0).permutation(200)
    chosen = split_indices([keys[j] for j in perm], labels[perm], lambda n: n // 10, "test")
    shuffled = {keys[perm[i]] for i in chosen}
    assert test == shuffled and len(test) == 20
    assert np.bincount(labels[[keys.index(k) for k in test]]).tolist() == [5] * 4


def test_format_describes_the_data_and_round_trips_through_a_dict():
    images = ArrayDataset(name="tiny", kind="image", data=torch.zeros(4, 3, 5, 6), labels=torch.tensor([0, 1, 2, 1]),
                          num_classes=3, split="train", source="test", levels=256)
    fmt = images.format
    assert fmt == DataFormat("tiny", "image", (3, 5, 6), 3, 256) and fmt.shape == images.shape
    points = ArrayDataset(name="pts", kind="toy", data=torch.zeros(7, 2), labels=None, num_classes=0,
                          split="test", source="code")
    assert points.format == DataFormat("pts", "toy", (2,)) and points.format.levels is None
    assert digits("test").format == DataFormat("digits", "image", (1, 8, 8), 10, 17)
    # a checkpoint stores dataclasses.asdict(format); through JSON the shape comes back a list
    saved = {**dataclasses.asdict(fmt), "shape": list(fmt.shape)}
    back = DataFormat.from_dict(saved)
    assert back == fmt and back.shape == (3, 5, 6)
    assert DataFormat(**saved) != fmt  # harness: without from_dict's tuple the formats differ
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.levels = 17
