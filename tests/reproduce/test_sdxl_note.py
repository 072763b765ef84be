"""SDXL's notes (`hirune.reproduce.sdxl`) at --budget tiny through the command, once each: the
report folders, and what the tiny budget already fixes -- the references computed from the data
(sharpness of the degraded test digits, their brightness spread, the buckets' shares), the
settings each part must pass to its runs and samplers (noise offsets, bucket shapes, the
refiner's hand-over), the moves asked -- while whether each trick helps is the small budget's
measurement, said in the notes."""

from __future__ import annotations

import pytest
import torch

from reproduced import run_at_tiny

RUN_HERE = ["sdxl-micro", "sdxl-offset", "sdxl-refiner", "sdxl-buckets"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{name: (printed output, report JSON)} of each SDXL note at --budget tiny."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("reports"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_micro_measures_sharpness_per_height_and_the_crop_moves_asked(reports):
    printed, report = reports["sdxl-micro"]
    data = report["data"]
    sharp = data["sharpness"]
    heights = sorted(int(h) for h in sharp["data"])
    assert heights == [7, 14, 28] and sorted(int(h) for h in sharp["told"]) == heights
    # the data's reference: test digits degraded to a smaller original height are blurrier
    assert sharp["data"]["7"] < sharp["data"]["14"] < sharp["data"]["28"]
    crop = data["crop"]
    assert crop["margin"] == 4 and crop["asked"] == {"-4": [4, 4], "4": [-4, -4]}   # content cut at d lands at -d
    assert 0 < crop["spread"]["data"] < 1                # MNIST's digits are centred (0.29 px)
    fd = data["frechet"]
    assert fd["told"] > 0 and fd["untold"] > 0 and 0 < fd["real_vs_real"] < fd["told"]
    assert [r[0] for r in report["rows"]][-1] == "Frechet distance" and "original height 14" in printed
    assert report["columns"] == ["measure", "asked", "told", "untold", "test digits"]


def test_offset_trains_both_offsets_and_measures_the_test_digits_brightness(reports):
    from hirune.data import load_dataset

    printed, report = reports["sdxl-offset"]
    data = report["data"]
    assert {k: r["noise_offset"] for k, r in data["runs"].items()} == {"0": 0.0, "0.1": 0.1}
    means = load_dataset("mnist5k-brightness", "test").images.mean(dim=(1, 2, 3))
    assert data["data"]["std"] == pytest.approx(float(means.std()), rel=1e-6)
    assert data["data"]["mean"] == pytest.approx(float(means.mean()), rel=1e-6)
    assert 0.3 < data["data"]["std"] < 0.45                # the random brightness spreads the data
    assert all(r["std"] >= 0 and r["frechet"] > 0 for r in data["runs"].values())
    assert report["rows"][-1][0] == "test digits" and "noise offset 0.1" in printed


def test_refiner_takes_over_and_the_longer_base_gets_the_refiners_steps(reports):
    printed, report = reports["sdxl-refiner"]
    data = report["data"]
    early, later, steps = data["early"], data["later"], data["refiner_steps"]
    assert later - early == steps and data["switch"] == 0.2
    rows = data["rows"]
    assert list(rows) == [f"base at {early}", f"base at {early} + refiner", f"base at {later}",
                          f"base at {later} + refiner"]
    for name, r in rows.items():
        assert r["frechet"] > 0
        if r["refiner_steps"]:
            assert r["change"] > 0, f"{name}: the refiner never took over"
    assert report["rows"][-1][0] == "real vs real" and "+ refiner" in printed


def test_buckets_sample_at_each_bucket_shape_and_score_against_its_own_digits(reports):
    from hirune.data import load_dataset

    printed, report = reports["sdxl-buckets"]
    found = report["data"]["buckets"]
    test = load_dataset("mnist5k-aspect", "test")
    assert [r["bucket"] for r in found] == ["28x28", "32x24", "24x32"]
    assert [r["sample_shape"] for r in found] == [[28, 28], [32, 24], [24, 32]]
    assert sum(r["train_share"] for r in found) == pytest.approx(1.0)
    assert [r["test_digits"] for r in found] == torch.bincount(test.bucket, minlength=3).tolist()
    assert found[2]["train_share"] < 0.1 < found[0]["train_share"] < found[1]["train_share"]  # the wide one is rare
    for r in found:
        assert 0 <= r["class_accuracy"] <= 1 and r["frechet_distance"] > 0 and r["frechet_real_vs_real"] > 0
    assert "24x32" in printed


def test_frechet_scores_every_set_as_the_evaluator_does():
    from hirune.data import load_dataset
    from hirune.metrics.evaluator import evaluate_images
    from hirune.reproduce.sdxl.common import frechet

    images = load_dataset("digits", "test").images[:24].flip(-1)    # mirrored digits: far from the data
    scores = frechet("digits", {"few": images[:12], "mirrored": images})
    expected = evaluate_images("digits", images)
    assert scores["mirrored"] == pytest.approx(expected["frechet_distance"], rel=1e-9)
    assert scores["real_vs_real"] == pytest.approx(expected["frechet_real_vs_real"], rel=1e-9)   # n: the largest set
    assert scores["few"] != scores["mirrored"]
