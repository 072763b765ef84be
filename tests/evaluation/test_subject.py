"""The crossbar detector (evaluation/subject.py) on mnist5k's held-out split: true on
crossbar-augmented held-out sevens, false on the plain held-out digits of every class; and a
broken variant (any long row in the middle band) that flags plain digits."""

from __future__ import annotations

import pytest
import torch

from hirune.data import load_dataset
from hirune.data.subjects import add_crossbar, crossbar_sevens, ink_runs
from hirune.evaluation.subject import has_crossbar


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("mnist5k", "test")


def test_true_on_crossbar_sevens_false_on_plain_digits(test_split):
    x, y = test_split.data, test_split.labels
    crossed = has_crossbar(add_crossbar(x[y == 7])).float().mean().item()
    plain = {d: has_crossbar(x[y == d]).float().mean().item() for d in range(10)}
    print(f"held-out crossbar sevens {crossed:.0%}; plain held-out digits {plain}")
    assert crossed >= 0.9                                   # measured: 92%
    assert all(plain[d] <= 0.02 for d in range(10) if d != 7)   # measured: 0% for each
    assert plain[7] <= 0.1                  # measured 8%: mostly sevens written with a crossbar
    assert has_crossbar(crossbar_sevens()).all()


def _broken(images):  # a long run anywhere in the middle band, whatever crosses it
    out = []
    for img in images:
        ink = img[0] > 0
        rows = ink.any(1).nonzero().flatten()
        top, bottom = int(rows.min()), int(rows.max())
        band = range(top + int(0.3 * (bottom - top)), top + int(0.75 * (bottom - top)) + 1)
        out.append(any(b - a + 1 >= 8 for r in band for a, b in ink_runs(ink[r])))
    return torch.tensor(out)


def test_a_broken_variant_flags_plain_digits(test_split):
    x, y = test_split.data, test_split.labels
    assert _broken(add_crossbar(x[y == 7])).float().mean() >= 0.9
    assert max(_broken(x[y == d]).float().mean().item() for d in range(10) if d != 7) > 0.2   # fours, fives...


def test_blank_images_and_other_shapes():
    assert not has_crossbar(-torch.ones(2, 1, 28, 28)).any()
    with pytest.raises(ValueError, match="1-channel"):
        has_crossbar(torch.zeros(2, 3, 28, 28))
