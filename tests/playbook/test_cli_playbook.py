"""`hirune playbook`: the list, each playbook on its smallest settings (the table printed, NAME.png
and NAME.json written), --json, and the errors (an unknown playbook or option names the valid ones)."""

from __future__ import annotations

import json

import pytest

from hirune.cli import main
from hirune.playbook import PLAYBOOKS

SMALLEST = {
    "memory-profile": ["layers=1", "hidden=16", "heads=2", "vocab=32", "seq=8", "batch=2", "steps=2"],
    "parameters": [],
    "activations": ["layers=1", "hidden=16", "heads=2", "vocab=32", "batches=1,2", "seqs=8,16"],
    "recompute": ["layers=1", "hidden=16", "heads=2", "vocab=32", "seq=16", "batch=2", "repeats=1"],
    "collectives": ["reduce_elements=3"],
    "ring-allreduce": ["worlds=2", "sizes=12"],
    "data-parallel": ["steps=1", "layers=1", "hidden=16", "batch=4"],
    "zero1": ["steps=1", "layers=1", "hidden=16", "batch=4"],
}


def test_every_playbook_has_a_smallest_setting():
    assert set(SMALLEST) == set(PLAYBOOKS)


def test_the_list_names_every_playbook(capsys):
    assert main(["playbook"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PLAYBOOKS) and "options: layers=2" in out


@pytest.mark.parametrize("name", list(SMALLEST))
def test_playbook_prints_its_table_and_writes_its_figure(name, tmp_path, capsys):
    assert main(["playbook", name, *SMALLEST[name], "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / f"{name}.json").read_text())
    assert out.splitlines()[0] == report["title"]
    assert "  ".join(report["columns"][:2]).split()[0] in out.splitlines()[1]
    assert len(report["rows"]) > 0 and "MISMATCH" not in out and "UNEXPECTED" not in out and "DIFFERS" not in out
    png = tmp_path / f"{name}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert f"wrote {tmp_path / name}.json, {png}" in out


def test_json_prints_the_report(tmp_path, capsys):
    assert main(["playbook", "parameters", "--json", "--out", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["name"] == "parameters" and report["rows"][-1][-1] == 124_439_808


@pytest.mark.parametrize("argv, message", [
    (["playbook", "zero2"], "no playbook 'zero2'; valid: memory-profile, parameters, activations"),
    (["playbook", "ring-allreduce", "world=2"], "unknown option 'world'; valid: worlds=2,3,4 sizes="),
    (["playbook", "zero1", "steps=two"], "steps='two' is not valid; expected int like 3"),
    (["playbook", "zero1", "steps"], "'steps' is not key=value"),
])
def test_errors_name_what_is_valid(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hirune playbook: error: ") and message in err
