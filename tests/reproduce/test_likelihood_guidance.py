"""The `likelihood` and `guidance-digits` notes (`reproduce/bits.py`, `reproduce/guided.py`) at
--budget tiny through the command, once each: the report folder, the table's rows, the notes
under it saying what the numbers say; and two harnesses that do not need trained networks: the
same density scored exactly and through the probability-flow ODE gives the same bits/dim (the
note's "scored the same way"), and at s = 0 both guidance methods are the same model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from reproduced import run_at_tiny
from hirune.reproduce import NOTES
from hirune.reproduce import bits, guided

RUN_HERE = ["likelihood", "guidance-digits"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Each note at --budget tiny through the command, once: {name: (printed, report JSON)}."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("reports"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_likelihood_scores_every_family_on_the_same_digits(reports):
    printed, report = reports["likelihood"]
    results = report["data"]["results"]
    assert [row[0] for row in report["rows"]] == list(bits.CONTESTANTS) == list(results)
    assert report["title"] in printed and NOTES["likelihood"].shows
    n = report["data"]["n"]
    for name, r in results.items():
        assert r["nll_examples"] == n and r["dequantization"] == "uniform, 17 levels", name
        assert math.isfinite(r["bits_per_dim"]) and r["bits_per_dim"] > 0 and r["bits_per_dim_stderr"] >= 0, name
        assert r["steps"] == report["data"]["steps"] and r["batch"] == report["data"]["batch"], name
        exact = r["family"] == "normalizing_flow"
        assert r["nll_method"].startswith("exact" if exact else "probability-flow ODE"), name
        assert exact == ("nll_nfe" not in r), name
    assert results["vpsde-likelihood"]["weighting"] == "likelihood" and "weighting" not in results["vpsde"]
    assert results["ddpm"]["process_config"]["T"] == bits.SIZES["tiny"]["ddpm"]["T"]


def test_likelihood_notes_follow_the_numbers(reports):
    _, report = reports["likelihood"]
    results, effect, notes = report["data"]["results"], report["data"]["weighting"], " ".join(report["notes"])
    change = results["vpsde-likelihood"]["bits_per_dim"] - results["vpsde"]["bits_per_dim"]
    assert effect["change"] == pytest.approx(change)
    assert ("weighting lowers" in notes) == (change < 0)
    assert ("not resolved" in notes) == (abs(change) <= 2 * effect["stderr"])
    flows = min(r["bits_per_dim"] for r in results.values() if r["family"] == "normalizing_flow")
    odes = min(r["bits_per_dim"] for r in results.values() if r["family"] != "normalizing_flow")
    assert ("the exact flow is ahead" in notes) == (flows < odes)


class _GaussianFlow(nn.Module):
    """log N(x; 0, s^2 I) of images (B, 1, 8, 8): a "flow" whose density is known."""

    def __init__(self, s: float):
        super().__init__()
        self.s = s

    def forward(self, x):
        return torch.distributions.Normal(0.0, self.s).log_prob(x).flatten(1).sum(1)


def _gaussian_runs(s: float, process_name: str, prediction: str):
    """The density N(0, s^2 I) on the digits as a flow run and as a diffusion run: its exact
    posterior mean of x_0 (prediction x0) or velocity d x_t / dt (prediction velocity)."""
    from hirune.data.registry import data_format
    from hirune.process import make_process
    from hirune.process.denoiser import Denoiser

    process = make_process(process_name)

    def exact(x, t):   # x_t ~ N(0, (alpha^2 s^2 + sigma^2) I), so E[x_0 | x_t] and E[eps | x_t] are linear in x_t
        a, sig, da, dsig = (v.to(x.dtype).reshape(-1, 1, 1, 1) for v in
                            (process.alpha(t), process.sigma(t), process.dalpha(t), process.dsigma(t)))
        x0, eps = a * s ** 2 * x / (a ** 2 * s ** 2 + sig ** 2), sig * x / (a ** 2 * s ** 2 + sig ** 2)
        return x0 if prediction == "x0" else da * x0 + dsig * eps

    data = data_format("digits")
    return (SimpleNamespace(data=data, model=_GaussianFlow(s)),
            SimpleNamespace(data=data, model=nn.Identity(), denoiser=Denoiser(exact, process, prediction)))


@pytest.mark.parametrize("process_name, prediction", [("vp", "x0"), ("rectified_flow", "velocity")])
def test_the_ode_and_the_exact_density_give_one_number_for_one_density(process_name, prediction):
    """`bits.score` on one known density, N(0, 0.5^2 I) over the digits: exactly (a flow) and
    through the probability-flow ODE of its exact denoiser, on the VP SDE and on rectified
    flow's path (Hutchinson's estimate is exact for a velocity linear in x with Jacobian c I).
    The same dequantized digits and the same bound: the two families' numbers agree to the
    ODE's tolerance."""
    flow_run, diffusion_run = _gaussian_runs(0.5, process_name, prediction)
    exact = bits.score(flow_run, "normalizing_flow", 8, 1e-5)
    ode = bits.score(diffusion_run, "diffusion", 8, 1e-5)
    assert exact["nll_examples"] == ode["nll_examples"] == 8
    assert ode["bits_per_dim"] == pytest.approx(exact["bits_per_dim"], abs=2e-3)
    assert ode["bits_per_dim_stderr"] == pytest.approx(exact["bits_per_dim_stderr"], abs=2e-3)


def test_guidance_table_has_both_methods_at_every_scale_and_the_same_model_at_zero(reports):
    printed, report = reports["guidance-digits"]
    data, size = report["data"], guided.SIZES["tiny"]
    assert [row[0] for row in report["rows"]] == list(size["scales"]) and "classifier guidance" in printed
    cfg, cg = data["results"]["classifier-free"], data["results"]["classifier"]
    for point in cfg + cg:
        assert 0 <= point["class_accuracy"] <= 1 and point["frechet_distance"] > 0
        assert point["num_images"] == size["n"]
    # s = 0: both methods sample the null label's model from the same noise
    assert cg[0]["class_accuracy"] == cfg[0]["class_accuracy"]
    assert cg[0]["frechet_distance"] == pytest.approx(cfg[0]["frechet_distance"], rel=1e-6)
    notes = " ".join(report["notes"])
    assert ("does not track" in notes) == (not data["tracks"])


def _point(scale, accuracy, frechet):
    return {"scale": scale, "class_accuracy": accuracy, "frechet_distance": frechet, "frechet_real_vs_real": 3.0}


def test_guidance_words_follow_the_numbers():
    size = guided.SIZES["small"]
    cfg = [_point(0, 0.1, 30), _point(1, 0.9, 5), _point(2, 0.99, 7), _point(4, 1.0, 15)]
    near = [_point(0, 0.1, 30), _point(1, 0.85, 6), _point(2, 0.95, 8), _point(4, 0.97, 12)]
    far = [_point(0, 0.1, 30), _point(1, 0.5, 28), _point(2, 0.6, 25), _point(4, 0.75, 21)]
    assert guided.tracks({"classifier-free": cfg, "classifier": near})
    assert not guided.tracks({"classifier-free": cfg, "classifier": far})
    words = " ".join(guided.notes({"classifier-free": cfg, "classifier": far}, size, (1, 1), False))
    assert "does not track" in words and "the trade-off" in words and "does not show" not in words
    flat = [_point(0, 0.1, 30), _point(1, 0.9, 5), _point(2, 0.9, 4), _point(4, 0.9, 3)]
    words = " ".join(guided.notes({"classifier-free": flat, "classifier": flat}, size, (1, 1), True))
    assert "does not show at this budget (accuracy does not rise)" in words and "does not track" not in words


def test_a_sample_count_that_is_not_whole_classes_is_refused():
    with pytest.raises(ValueError, match="multiple of 10"):
        guided.sweep(None, None, (0.0,), 25, 4)
    assert all(size["n"] % 10 == 0 for size in guided.SIZES.values())


def test_the_sweep_script_is_a_caller_of_the_note_and_refuses_missing_runs(tmp_path):
    """benchmarks/guidance_sweep.py keeps the edits and runs the sweep through `reproduce.guided`."""
    from benchmark_scripts import load_benchmark

    script = load_benchmark("guidance_sweep")
    assert script.guided is guided and not hasattr(script, "tradeoff_plot")
    with pytest.raises(SystemExit, match="pass --train"):
        script.main(["--cond", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
