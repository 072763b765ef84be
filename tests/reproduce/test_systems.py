"""The later systems' notes (`hirune.reproduce.systems`) at --budget tiny through the command, once
each: the report folder, and the facts the tiny budget already fixes (sizes are exact at any
number of steps; whether a system beats another is the small budget's measurement)."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from hirune.cli import main

pytest.importorskip("peft")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{name: (printed output, report JSON)} of each system's note at --budget tiny."""
    root, out = tmp_path_factory.mktemp("reports"), {}
    for name in ("lora",):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["reproduce", name, "--budget", "tiny", "--out", str(root)]) == 0
        folder = root / name
        assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<table>" in (folder / "index.html").read_text()
        out[name] = (printed.getvalue(), json.loads((folder / f"{name}.json").read_text()))
    return out


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
