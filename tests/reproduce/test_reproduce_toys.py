"""The trained-toy and likelihood notes of `hirune reproduce` at --budget tiny, each through the
command once: what tiny can already check (exact identities, counts, shapes, orderings that
hold for any trained model).  Whether the papers' claims hold is the small budget's question
(the figures in the README)."""

from __future__ import annotations

import pytest
import torch

from reproduced import run_at_tiny

RUN_HERE = ["reflow", "score-models", "normalizing-flows"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """{name: (printed table, report data)} of every note here at --budget tiny."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("toys"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_reflow_counts_one_evaluation_per_euler_step_and_trains_on_the_teachers_pairs(reports):
    printed, report = reports["reflow"]
    data = report["data"]
    assert set(data["curves"]) == {"1-RF", "OT-CFM", "2-RF"} and "real vs real" in printed
    for name in data["curves"]:
        assert data["nfe"][name] == data["euler_steps"] == [1, 2, 4, 8, 16, 64], name
        assert len(data["curves"][name]) == 6 and 0 <= data["straightness"][name] < float("inf")
    assert data["pairs_error"] < 1e-4              # 2-RF's data are 1-RF's ODE of their noise, to rounding
    assert [row[0] for row in report["rows"]] == [1, 2, 4, 8, 16, 64, "straightness"]
    assert 0 < data["real_vs_real"] < min(min(c) for c in data["curves"].values())   # untrained: above the floor


def test_score_models_report_the_true_density_of_the_same_points_and_sample_each_model(reports):
    from hirune.data import load_dataset
    from hirune.data.toys import toy_mixture

    printed, report = reports["score-models"]
    data = report["data"]
    test = load_dataset("eight_gaussians", "test").data[:data["n_nll"]].double()
    assert data["true_nll"] == pytest.approx(float(-toy_mixture("eight_gaussians").log_prob(test).mean()), rel=1e-12)
    assert list(data["models"]) == ["ncsn", "vpsde, likelihood weighting"]   # tiny: one of each kind
    for label, row in data["models"].items():
        assert row["nll_examples"] == data["n_nll"] and row["nll_method"].startswith("probability-flow ODE"), label
        assert row["nll_nats"] > data["true_nll"], label     # 30 steps are far from the true density
        assert ("sw_ode" in row) == (label != "ncsn") and row["sampler"] == ("annealed_langevin" if label == "ncsn"
                                                                             else "pc"), label
    assert data["models"]["vpsde, likelihood weighting"]["weighting"] == "likelihood"
    assert [row[0] for row in report["rows"]] == list(data["models"]) and "true density" in printed


def test_flows_log_determinant_is_the_autograd_jacobians(reports):
    printed, report = reports["normalizing-flows"]
    results = report["data"]["results"]
    assert set(results) == {"eight_gaussians realnvp", "eight_gaussians maf"}
    for key, r in results.items():
        assert r["logdet_gap"] < 1e-9, key                         # exact at every budget, trained or not
        assert r["true"] < r["gaussian"] and r["true"] < r["nll"], key   # the true density is the floor
    assert "log-det gap" in printed


def test_the_log_determinant_check_catches_a_wrong_log_determinant():
    """A flow whose encode drops a layer's log-determinant term is caught by the same check."""
    from hirune.models.normalizing_flow import Flow, FlowConfig
    from hirune.reproduce.likelihood import logdet_gap

    flow = Flow(FlowConfig(kind="realnvp", shape=(2,), steps=2, hidden=8))
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.3)                                       # a non-trivial map (zero-initialised nets)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    assert logdet_gap(flow, x) < 1e-9
    encode = flow.encode
    flow.encode = lambda x: (encode(x)[0], 0.5 * encode(x)[1])     # half the log-determinant
    assert logdet_gap(flow, x) > 1e-3
