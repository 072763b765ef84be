"""The unclip and dalle-rerank notes (`hirune.reproduce.systems`) at --budget tiny through the
command, once each: the report folder, and what the tiny budget already fixes -- the rows and
their order, shares that are shares, reranking keeping the candidate CLIP scores highest, the
CLIP text embedding the same guess at every decoder scale, variations that differ (the moved
checks of tests/benchmarks/test_unclip_eval.py).  Whether the prior or reranking helps is the
small budget's measurement."""

from __future__ import annotations

import pytest

from reproduced import run_at_tiny

RUN_HERE = ["unclip", "dalle-rerank"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{name: (printed output, report JSON)} of each note at --budget tiny."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("reports"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_unclip_decodes_with_and_without_the_prior_at_every_scale(reports):
    printed, report = reports["unclip"]
    data = report["data"]
    scales = data["size"]["scales"]
    ends = data["text_to_image"]
    assert [(r["prior"], r["scale"]) for r in ends] == [(p, s) for p in (True, False) for s in scales]
    for r in ends:
        assert r["frechet_distance"] > 0 and r["num_images"] == data["size"]["n"]
        for key in ("class_accuracy", "train_phrasing_accuracy", "held_out_phrasing_accuracy"):
            assert 0 <= r[key] <= 1, key
    rows = report["rows"]
    assert [r[0] for r in rows[:2 * len(scales)]] == (["prior, best of 2"] * len(scales)
                                                      + ["CLIP text embedding (no prior)"] * len(scales))
    assert rows[-1][0] == "real vs real" and rows[-1][4] == ends[0]["frechet_real_vs_real"]
    assert "CLIP text embedding (no prior)" in printed


def test_unclip_prior_rows_are_cosines_of_unit_embeddings_and_the_text_guess_is_fixed(reports):
    data = reports["unclip"][1]["data"]
    prior = data["prior"]
    assert [p["scale"] for p in prior] == data["size"]["prior_scales"]
    assert prior[0]["examples"] == data["size"]["prior_n"]
    for p in prior:
        for phrasing in ("train", "held_out"):
            for guess in ("best_of_2", "best_of_1", "text_embedding"):
                assert -1 <= p[f"{phrasing}/{guess}/cosine"] <= 1 and 0 <= p[f"{phrasing}/{guess}/zero_shot"] <= 1
    # the text embedding does not depend on the prior's scale; the table shows the prior's first scale
    for p in prior[1:]:
        assert p["train/text_embedding/cosine"] == prior[0]["train/text_embedding/cosine"]
    table = {(r[0], r[1]): r for r in reports["unclip"][1]["rows"]}
    for s in data["size"]["scales"]:
        assert table["CLIP text embedding (no prior)", s][2:4] == [prior[0]["train/text_embedding/cosine"],
                                                                     prior[0]["held_out/text_embedding/cosine"]]
        assert table["prior, best of 2", s][2] == prior[0]["train/best_of_2/cosine"]


def test_unclip_variations_differ_and_stay_finite(reports):
    v = reports["unclip"][1]["data"]["variations"]
    size = reports["unclip"][1]["data"]["size"]
    assert v["sources"] == size["sources"] and v["per_source"] == size["per"] and v["scale"] == size["scales"][-1]
    assert 0 <= v["source_class_kept"] <= 1
    assert 0 < v["rms_between_variations"] < 2 and 0 < v["rms_variation_to_source"] < 2   # pixels in [-1, 1]


def test_dalle_rerank_keeps_the_best_candidate_of_n_for_every_row(reports):
    printed, report = reports["dalle-rerank"]
    rows = report["data"]["rows"]
    ns = sorted({r["candidates"] for r in rows})
    assert [(r["scale"], r["candidates"]) for r in rows] == [(s, k) for s in (1.0, 3.0) for k in ns] and ns[0] == 1
    for r in rows:
        assert r["candidates_drawn"] == r["candidates"] * r["images"]
        for key in ("class_accuracy", "train_phrasing_accuracy", "held_out_phrasing_accuracy"):
            assert 0 <= r[key] <= 1, key
        assert r["frechet_distance"] > 0 and r["num_images"] == report["data"]["samples"]
        if r["candidates"] == 1:      # the one candidate is the one kept
            assert r["clip_score_kept"] == pytest.approx(r["clip_score_candidates"], abs=1e-6)
        else:                         # the best of N lies above the mean of the N
            assert r["clip_score_kept"] > r["clip_score_candidates"]
    assert [row[1] for row in report["rows"]] == [r["candidates"] for r in rows] and "CLIP similarity" in printed
