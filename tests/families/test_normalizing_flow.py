"""Sampling a normalizing flow (`families/normalizing_flow.py`): large counts in chunks
(chunk k from seed + k; a count within one chunk gives the samples it always gave), sizes
checked."""

from __future__ import annotations

import pytest
import torch

from hirune.families import base
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    return Trainer(preset_config("realnvp-two-moons", {"out": str(tmp_path_factory.mktemp("flow"))})).family


def test_a_large_count_is_drawn_in_chunks_seeded_seed_plus_k(flow, monkeypatch):
    monkeypatch.setattr(base, "SAMPLE_CHUNK", 4)
    out, _ = flow.generate(10, seed=5)
    parts = [flow.generate(k, seed=s)[0].x for k, s in ((4, 5), (4, 6), (2, 7))]
    assert out.x.shape == (10, 2) and torch.equal(out.x, torch.cat(parts))
    with pytest.raises(ValueError, match="trajectory .* at most 4 samples"):
        flow.generate(5, trajectory=True)


@pytest.mark.parametrize("n", [0, -5, 10**12])
def test_bad_counts_are_refused(flow, n):
    with pytest.raises(ValueError, match=f"n={n}"):
        flow.generate(n)
    with pytest.raises(ValueError, match=f"n={n}"):
        flow.evaluate(n)


def test_nll_counts_are_checked(flow):
    with pytest.raises(ValueError, match="nll=-1 is not valid"):
        flow.evaluate(10, nll=-1)
    with pytest.raises(ValueError, match="nll=10001: the two_moons test split has 10000 examples"):
        flow.nll(10001)
