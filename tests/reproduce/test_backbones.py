"""The backbone notes (`reproduce/latent.py`, `reproduce/backbones.py`) at --budget tiny through
the command, once each: the pipeline, the table, the JSON and the PNG, the notes under the table
saying what the numbers say; and the exact pieces they rest on (the Gflops count, the rank
correlation, the calibration's refusal, U-ViT's switch)."""

from __future__ import annotations

import math

import pytest
import torch

from reproduced import run_at_tiny
from hirune.reproduce import NOTES

RUN_HERE = ["latent-diffusion", "dit", "uvit"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Each backbone note at --budget tiny through the command, once: {name: (printed, report JSON)}."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("reports"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_latent_diffusion_gives_both_networks_the_budget_and_says_what_it_measured(reports):
    printed, report = reports["latent-diffusion"]
    data, notes = report["data"], " ".join(report["notes"])
    runs = data["runs"]
    assert report["title"] in printed and NOTES["latent-diffusion"].shows
    assert [row[:2] for row in report["rows"]] == [["pixels", "vpred-digits"], ["latents", "ldm-mnist5k"]]
    assert runs["pixels"]["train_steps"] == runs["latents"]["train_steps"] == 4   # tiny: fixed steps
    assert all(r["params"] > 0 and math.isfinite(r["frechet"]) and 0 <= r["class_entropy"] <= math.log2(10) + 1e-9
               for r in runs.values())
    assert data["autoencoder_s"] > 0
    ahead = runs["latents"]["frechet"] < runs["pixels"]["frechet"]
    assert ("latent diffusion ahead" in notes) == ahead and ("does not hold" in notes) == (not ahead)


def test_dit_grid_orders_by_gflops_and_says_what_it_measured(reports):
    _, report = reports["dit"]
    data, notes = report["data"], " ".join(report["notes"])
    runs = data["runs"]
    assert list(runs) == ["D32x1/4", "D32x1/2"]
    # the same width and depth: a 2 x 2 patch has 4x the tokens, so more flops (attention: more than 4x
    # per token pair), and about the same parameters (only the patch embedding and final layer differ)
    assert runs["D32x1/2"]["gflops"] > 2 * runs["D32x1/4"]["gflops"] > 0
    assert abs(runs["D32x1/2"]["params"] - runs["D32x1/4"]["params"]) < 0.1 * runs["D32x1/4"]["params"]
    by_cost = sorted(runs.values(), key=lambda m: m["gflops"])
    assert data["spearman"] == pytest.approx(-1.0 if by_cost[1]["frechet"][0] < by_cost[0]["frechet"][0] else 1.0)
    patch_won = runs["D32x1/2"]["frechet"][0] < runs["D32x1/4"]["frechet"][0]
    assert data["axes"] == {"smaller patch": [patch_won], "bigger model": []}     # one width at tiny: no model pair
    assert f"the smaller patch lowered the Frechet distance in {int(patch_won)} of 1 pairs" in notes
    holds, every_axis = data["spearman"] < 0, all(all(won) for won in data["axes"].values())
    assert ("as the paper says" in notes) == (holds and every_axis)
    assert ("does not hold" in notes) == (not holds) and ("holds only in part" in notes) == (holds and not every_axis)


def test_uvit_compares_the_same_network_with_and_without_long_skips(reports):
    _, report = reports["uvit"]
    data, notes = report["data"], " ".join(report["notes"])
    with_, without = data["runs"]["long skips"], data["runs"]["no long skips"]
    # the only difference: depth // 2 = 1 skip Linear(2D -> D) of D = 32
    assert with_["params"] - without["params"] == 2 * 32 * 32 + 32
    assert with_["gflops"] > without["gflops"]
    assert data["gap"] == pytest.approx(without["frechet"][0] - with_["frechet"][0])
    assert "does not hold" in notes            # one seed at tiny: never a verdict


def test_forward_gflops_counts_a_linear_layer_exactly():
    from hirune.reproduce.backbones import forward_gflops

    class Linear(torch.nn.Module):          # (1, 3, 4, 4) -> 48 features -> 10: 2 * 48 * 10 flops
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(48, 10, bias=False)

        def forward(self, x, t):
            return self.fc(x.flatten(1))

    assert forward_gflops(Linear(), (3, 4, 4)) == pytest.approx(2 * 48 * 10 / 1e9)


def test_spearman_is_the_rank_correlation_and_refuses_bad_input():
    from hirune.reproduce.backbones import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 1, 0.5, 0.1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)      # ranks, not values
    assert spearman([1, 2, 3], [2, 1, 3]) == pytest.approx(0.5)               # 1 - 6 * 2 / (3 * 8)
    with pytest.raises(ValueError, match="two lists of the same length >= 2, got 2 and 3"):
        spearman([1, 2], [1, 2, 3])


def test_the_calibration_refuses_a_trial_with_no_timed_step(tmp_path):
    from hirune.reproduce.latent import steps_in

    with pytest.raises(ValueError, match="trial=2 leaves no step after skip=2; valid: trial > skip"):
        steps_in(1.0, "ddpm-digits", {}, tmp_path / "trial", trial=2)
