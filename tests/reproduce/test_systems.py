"""The later systems' notes (`hirune.reproduce.systems`) at --budget tiny through the command, once
each: the report folder, and the facts the tiny budget already fixes (sizes are exact at any
number of steps; whether a system beats another is the small budget's measurement)."""

from __future__ import annotations

import pytest

from optional import needs
from reproduced import run_at_tiny

pytestmark = needs("peft")


RUN_HERE = ["lora", "dreambooth", "textual-inversion", "clip", "dalle"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{name: (printed output, report JSON)} of each system's note at --budget tiny."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("reports"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_lora_sizes_follow_the_rank_and_the_equal_parameter_pair_is_equal(reports):
    printed, report = reports["lora"]
    rows = report["data"]["rows"]
    assert "full fine-tuning" in printed and len(rows) == 5
    r1, r4, full = rows["LoRA rank 1 (q, k, v, proj)"], rows["LoRA rank 4 (q, k, v, proj)"], rows["full fine-tuning"]
    assert r4["trainable"] == 4 * r1["trainable"] and full["trainable"] == full["base_parameters"]
    assert r1["base_parameters"] == r4["base_parameters"] == full["trainable"]   # the adapter freezes the base
    assert r1["optimizer_bytes"] < r4["optimizer_bytes"] < full["optimizer_bytes"]
    assert r1["file_bytes"] < r4["file_bytes"] < full["file_bytes"]
    assert rows["LoRA rank 2 on q, k, v, proj"]["trainable"] == rows["LoRA rank 8 on q alone"]["trainable"]
    assert all(r["frechet_distance"] > 0 for r in rows.values())
    assert [r[0] for r in report["rows"]][0] == "none (the base)" and report["rows"][-1][0] == "real vs real"


def test_dreambooth_rows_are_shares_and_distances_and_the_class_images_come_from_the_base(reports):
    printed, report = reports["dreambooth"]
    rows = report["data"]["rows"]
    assert list(rows) == ["base (before tuning)", "full, lambda=0", "full, lambda=1"] and "full, lambda=1" in printed
    for r in rows.values():
        for key in ("fidelity", "drift", "sks_read_as_seven", "other_digits_accuracy"):
            assert 0 <= r[key] <= 1
        assert r["diversity"] > 0 and r["seven_diversity"] > 0
    assert [rows[k]["prior_weight"] for k in list(rows)[1:]] == [0.0, 1.0] and report["data"]["same_class_images"]
    assert report["rows"][-1][0] == "the four instances" and report["data"]["instance_diversity"] > 0


def test_textual_inversion_trains_one_row_and_ships_the_fewest_bytes(reports):
    printed, report = reports["textual-inversion"]
    rows = report["data"]["rows"]
    ti, lora, booth = (rows[k] for k in ("textual inversion", "LoRA rank 4 (q, k, v, proj)",
                                         "DreamBooth (every weight, lambda = 1)"))
    assert ti["trainable"] == 128 and ti["prompt"] == "an image of <s*>" and lora["prompt"] == "a sks digit"
    assert ti["file_bytes"] < 4096 < lora["file_bytes"] < booth["file_bytes"]
    assert ti["trainable"] < lora["trainable"] < booth["trainable"]
    assert all(0 <= r[stage]["share"] <= 1 for r in rows.values() for stage in ("before", "after"))
    assert "textual inversion" in printed


def test_clip_reports_zero_shot_beside_the_supervised_tower(reports):
    printed, report = reports["clip"]
    clip, sup = report["data"]["clip"], report["data"]["supervised"]
    for key in ("zero_shot_train", "zero_shot_held_out", "zero_shot_train_all_attributes", "recall_image_to_text",
                "recall_text_to_image"):
        assert 0 <= clip[key] <= 1, key
    assert 0 <= sup["test_accuracy"] <= 1 and clip["image_tower_parameters"] < clip["parameters"]
    assert sup["parameters"] < clip["image_tower_parameters"]   # the same tower, a 10-way head for the 64-d one
    assert clip["examples"] > 0 and report["rows"][1][0] == "the image tower, supervised" and "supervised" in printed


def test_dalle_scores_every_scale_and_primes_with_the_top_code_rows(reports):
    printed, report = reports["dalle"]
    data = report["data"]
    assert list(data["scores"]) == ["1.0", "3.0"] and [r[0] for r in report["rows"]] == [1.0, 3.0]
    for m in data["scores"].values():
        for key in ("train_phrasing_accuracy", "held_out_phrasing_accuracy", "class_accuracy"):
            assert 0 <= m[key] <= 1, key
        assert m["frechet_distance"] > 0 and m["num_images"] == 20
    prime = data["priming"]
    assert prime["rows"] == 2 < prime["grid_rows"] and prime["images"] == 10
    assert all(0 <= prime[k] <= 1 for k in ("class_kept", "real_accuracy", "tokenized_accuracy"))
    assert "priming" in printed
