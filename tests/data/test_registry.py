"""hirune.data.registry: datasets by name.  `load_dataset` dispatches registered names,
folders and .npz files; unknown names list the valid ones; the sizes in DATASETS match the
data and `dataset_info` lists every dataset; `data_format` gives a registered dataset's
format without reading its data."""

import dataclasses

import numpy as np
import pytest
import torch

from hirune.data import DATASETS, DataFormat, data_format, dataset_info, load_dataset, toy_dataset
from hirune.data import registry


def _png(path, array, fmt=None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format=fmt)


def test_load_dataset_dispatches_names_folders_and_files(tmp_path):
    assert load_dataset("digits", "test").name == "digits"
    toy = load_dataset("rings", "test", size=100)
    assert toy.kind == "toy" and toy.points.shape == (100, 2) and toy.labels is None
    assert torch.equal(toy.points, toy_dataset("rings", "test", 100))
    _png(tmp_path / "imgs" / "a.png", np.zeros((3, 3)))
    assert load_dataset(tmp_path / "imgs", "all").shape == (1, 3, 3)
    np.savez(tmp_path / "arr.npz", images=np.zeros((20, 3, 3), dtype=np.uint8))
    assert len(load_dataset(str(tmp_path / "arr.npz"), "train")) == 18
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_dataset(str(tmp_path / "nothing_here"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a folder"):
        load_dataset(tmp_path / "f.txt")
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset("digits", "val")


def test_unknown_dataset_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'") as e:
        load_dataset("mnist")
    for name in ("digits", "mnist5k", "two_moons", "checkerboard", "gaussian_mixture"):
        assert name in str(e.value)


def test_registry_sizes_match_the_data():
    for name in ("digits", "mnist5k", "two_moons"):
        spec = DATASETS[name]
        train, test = load_dataset(name, "train"), load_dataset(name, "test")
        assert (len(train), len(test)) == (spec.train_size, spec.test_size)
        assert train.shape == spec.shape and train.num_classes == spec.num_classes == test.num_classes
        assert train.kind == spec.kind
    table = dataset_info()
    for name in DATASETS:
        assert name in table


def test_data_format_of_a_registered_name_reads_no_data(monkeypatch):
    """data_format(name) comes from the registry alone, and equals the format of the loaded
    training split.  Loading is made to fail (load_dataset and each spec's loader), so any
    read shows up; the harness line shows that the trap is armed."""
    expected = {name: load_dataset(name, "train").format for name in ("digits", "mnist5k", "two_moons")}

    def refuse(*args, **kwargs):
        raise AssertionError("data_format read the data")

    monkeypatch.setattr(registry, "load_dataset", refuse)
    for name in expected:
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], load=refuse))
    with pytest.raises(AssertionError, match="read the data"):
        DATASETS["digits"].load("train")
    for name, levels in (("digits", 17), ("mnist5k", 256), ("two_moons", None)):
        fmt = data_format(name)
        assert isinstance(fmt, DataFormat) and fmt == expected[name]
        assert fmt.name == name and fmt.levels == levels


def test_example_shape_is_read_without_loading_the_data(tmp_path, monkeypatch):
    """What the config check multiplies by the batch size: a registered dataset's from the
    registry, an .npz file's from its array header, a folder's from its first image."""
    from hirune.data import registry
    from hirune.data.registry import example_shape

    monkeypatch.setattr(registry, "image_folder", None)   # neither loader is called
    monkeypatch.setattr(registry, "npz_dataset", None)
    assert example_shape("mnist5k") == (1, 28, 28) and example_shape("two_moons") == (2,)
    np.savez(tmp_path / "a.npz", images=np.zeros((5, 3, 6, 7), dtype=np.uint8))
    assert example_shape(tmp_path / "a.npz") == (3, 6, 7)
    np.savez(tmp_path / "b.npz", pixels=np.zeros((5, 3, 6, 7), dtype=np.uint8))
    assert example_shape(tmp_path / "b.npz") is None          # the loader will say what is wrong
    _png(tmp_path / "imgs" / "sub" / "a.png", np.zeros((9, 4)))
    assert example_shape(tmp_path / "imgs") == (1, 9, 4)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        example_shape(str(tmp_path / "nothing_here"))
