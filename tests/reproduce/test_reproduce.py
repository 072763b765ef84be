"""`hirune reproduce`: the exact-mixture and memory notes run at --budget tiny, print their table
and write their report folder, and the claims the tiny budget can already check are checked;
every other note is run by a test file of its own (the playbooks by tests/playbook on their
smallest settings); bad input names what is valid."""

from __future__ import annotations

import html
import json

import pytest

from reproduced import run_at_tiny
from hirune.cli import main
from hirune.playbook.registry import PLAYBOOKS
from hirune.reproduce import NOTES

# the notes whose claims this file checks; the trained notes have their own files (tests/reproduce/test_*.py),
# which run each note once and check its page and figure too
OWN = [name for name, note in NOTES.items()
       if note.run.__module__ in ("hirune.reproduce.sampling", "hirune.reproduce.memory")]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Every own note at --budget tiny through the command, once: {name: (printed output, folder)}."""
    notes = run_at_tiny(OWN, tmp_path_factory.mktemp("reports"))
    return {name: (printed, folder) for name, (printed, _, folder) in notes.items()}


def _data(reports, name) -> dict:
    return json.loads((reports[name][1] / f"{name}.json").read_text())["data"]


@pytest.mark.parametrize("name", OWN)
def test_every_note_runs_at_the_tiny_budget_and_writes_its_report(name, reports):
    printed, folder = reports[name]
    page = (folder / "index.html").read_text()
    assert "<table>" in page and f'src="{name}.png"' in page and html.escape(NOTES[name].shows) in page
    assert (folder / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((folder / f"{name}.json").read_text())
    assert report["rows"] and report["title"] in printed


def test_zero_reproduces_the_papers_figure_1(reports):
    data = _data(reports, "zero")
    for strategy, paper in data["paper_gb"].items():
        assert round(data["per_gpu_gb"][strategy], 1) == paper, strategy


def test_ddim_at_eta_one_is_ddpm_and_beats_it_at_few_steps_at_eta_zero(reports):
    curves = _data(reports, "ddim")["curves"]
    assert curves["ddim eta=1"] == pytest.approx(curves["ddpm"], rel=1e-9)   # the same step, the same noise
    assert curves["ddim eta=0"][0] < curves["ddpm"][0]          # 10 steps: the deterministic sampler ahead


def test_guidance_trades_diversity_for_fidelity(reports):
    data = _data(reports, "guidance")                            # scales 0, 1, 3
    assert data["accuracy"][0] < 0.5 < 0.99 < data["accuracy"][1]   # unconditional: a third in each class
    assert data["spread"][2] < 0.8 * data["spread"][1]          # s = 3 crowds the class's samples together
    assert data["sliced_wasserstein"][1] < data["sliced_wasserstein"][2]   # s = 1 is the class; s = 3 is not


def test_exact_classifier_guidance_is_classifier_free_guidance(reports):
    cfg, classifier = _data(reports, "guidance"), _data(reports, "classifier-guidance")
    for key in ("accuracy", "spread", "sliced_wasserstein"):
        assert classifier[key] == pytest.approx(cfg[key], rel=1e-6, abs=1e-9), key


def test_the_probability_flow_ode_beats_the_reverse_sde_at_a_coarse_grid(reports):
    curves = _data(reports, "score-sde")["curves"]              # 20 steps, n = 4000
    for sde in ("vp", "ve"):
        assert curves[f"{sde} heun"][0][1] < curves[f"{sde} euler_maruyama"][0][1], sde


def test_flow_matching_paths_are_straighter_than_vps(reports):
    data = _data(reports, "flow-matching")
    assert data["straightness"]["rectified_flow"] < 0.7 * data["straightness"]["vp"]
    assert data["straightness"]["cond_ot"] == pytest.approx(data["straightness"]["rectified_flow"], rel=1e-2)


def test_every_note_is_run_by_a_test():
    """Each test file of a trained note names the notes it runs in a list `RUN_HERE`."""
    import ast
    from pathlib import Path

    run = set(OWN)
    for path in Path(__file__).parent.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RUN_HERE" for t in node.targets):
                run |= set(ast.literal_eval(node.value))
    missing = [name for name in NOTES if name not in PLAYBOOKS and name not in run]
    assert not missing, f"notes no test in tests/reproduce runs (name them in a RUN_HERE list): {missing}"


def test_json_prints_the_report(tmp_path, capsys):
    assert main(["reproduce", "zero", "--budget", "tiny", "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\nwrote ")[0])["name"] == "zero"


def test_the_list_names_every_note_with_its_cost(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NOTES) and "tiny" in out and "ring-allreduce" in out


@pytest.mark.parametrize("args, message", [
    (["reproduce", "ddpm-in-an-hour"],
     "unknown note 'ddpm-in-an-hour'; valid: " + ", ".join(NOTES) + " (hirune reproduce --list)"),
    (["reproduce", "zero", "--budget", "huge"], "budget='huge' is not valid; valid: ['tiny', 'small', 'full']"),
])
def test_bad_input_names_what_is_valid(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err
