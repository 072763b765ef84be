"""DreamBooth subjects (data/subjects.py): the crossbar sevens are deterministic sevens with a
crossbar added; instance images from a subject name, a folder of PNGs or an .npz; unknown
subjects refused naming the valid ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hirune.data import load_dataset
from hirune.data.subjects import SUBJECTS, add_crossbar, crossbar_sevens, ink_runs, instance_images


def test_ink_runs():
    row = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    assert ink_runs(row) == [(1, 2), (5, 5), (7, 7)]
    assert ink_runs(torch.zeros(4, dtype=torch.bool)) == []


def test_crossbar_sevens_are_deterministic_sevens_with_a_bar_added():
    x = crossbar_sevens(4)
    assert x.shape == (4, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(x, crossbar_sevens(4)) and not torch.equal(x, crossbar_sevens(4, seed=1))
    sevens = load_dataset("mnist5k", "train")
    sevens = sevens.data[sevens.labels == 7]
    order = torch.randperm(len(sevens), generator=torch.Generator().manual_seed(0))[:4]
    plain = sevens[order]
    changed = x != plain
    assert torch.all(x[changed] == 1.0)                       # only ink was added, at full brightness
    for img, diff in zip(x, changed):                          # a horizontal bar: 2 rows of up to 15 pixels
        rows = diff[0].any(1).nonzero().flatten()
        assert 1 <= len(rows) <= 2 and rows.max() - rows.min() <= 1
        assert diff[0].sum() <= 30
        assert len(ink_runs(img[0, int(rows[0])] > 0)) == 1 and (img[0, int(rows[0])] > 0).sum() >= 12
    assert torch.equal(add_crossbar(plain), x)
    with pytest.raises(ValueError, match="valid: an integer from 1 to"):
        crossbar_sevens(0)


def test_instance_images_from_a_name_a_folder_and_an_npz(tmp_path):
    from PIL import Image

    assert torch.equal(instance_images("crossbar-sevens"), crossbar_sevens())
    pixels = (np.arange(3 * 8 * 8).reshape(3, 8, 8) % 256).astype(np.uint8)
    np.savez(tmp_path / "subject.npz", images=pixels)
    (tmp_path / "pngs").mkdir()
    for i, p in enumerate(pixels):
        Image.fromarray(p, mode="L").save(tmp_path / "pngs" / f"{i}.png")
    expected = torch.from_numpy(pixels).float()[:, None] / 127.5 - 1
    assert torch.allclose(instance_images(str(tmp_path / "subject.npz")), expected, atol=1e-6)
    assert torch.allclose(instance_images(str(tmp_path / "pngs")), expected, atol=1e-6)


def test_an_unknown_subject_is_refused_naming_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="crossbar-sevens"):
        instance_images("dotted-sevens")
    with pytest.raises(FileNotFoundError, match="no such folder"):
        instance_images(str(tmp_path / "missing.npz"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="neither a folder"):
        instance_images(str(tmp_path / "a.txt"))
    assert sorted(SUBJECTS) == ["crossbar-sevens"]
