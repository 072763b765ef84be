"""The diffusion notes on the digits (`reproduce/digits.py`) at --budget tiny through the command:
the pipeline, the table, the JSON and the PNG, the notes under the table saying what the numbers
say; and the variational bound they report, checked against its closed form with an oracle."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from reproduced import run_at_tiny
from hirune.reproduce import NOTES

RUN_HERE = ["ddpm", "improved-ddpm", "v-prediction"]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Each digits note at --budget tiny through the command, once: {name: (printed, report JSON)}."""
    notes = run_at_tiny(RUN_HERE, tmp_path_factory.mktemp("reports"))
    return {name: (printed, report) for name, (printed, report, _) in notes.items()}


def test_ddpm_table_has_each_loss_with_each_variance_and_says_what_it_measured(reports):
    printed, report = reports["ddpm"]
    data, notes = report["data"], " ".join(report["notes"])
    assert [row[:2] for row in report["rows"]] == [["L_simple", "small"], ["L_simple", "large"],
                                                   ["L_vlb", "small"], ["L_vlb", "large"]]
    assert report["title"] in printed and NOTES["ddpm"].shows
    f = data["frechet"]
    assert all(math.isfinite(v) and v > data["real_vs_real"] for v in f.values())   # 30 steps: not yet digits
    assert all(0 <= h <= math.log2(10) + 1e-9 for h in data["class_entropy"].values())
    simple, vlb = min(f["L_simple small"], f["L_simple large"]), min(f["L_vlb small"], f["L_vlb large"])
    assert ("L_simple ahead" in notes) == (simple < vlb)                # the words follow the numbers
    assert ("does not hold at this budget" in notes) == (simple >= vlb)


def test_improved_ddpm_table_and_bound(reports):
    _, report = reports["improved-ddpm"]
    data, notes = report["data"], " ".join(report["notes"])
    assert data["grid"] == [5, 10] and len(report["rows"]) == 6
    assert set(data["frechet"]) == set(data["bound_bits_per_dim"])
    assert all(len(v) == 2 and all(math.isfinite(x) for x in v) for v in data["frechet"].values())
    assert all(0 < b < 100 for b in data["bound_bits_per_dim"].values())   # a sum of KLs and a decoder NLL
    learned, fixed = data["frechet"]["cosine L_hybrid, learned"], data["frechet"]["cosine L_hybrid, small"]
    assert ("learned variance ahead" in notes) == (learned[0] < fixed[0])
    best = min(data["bound_bits_per_dim"].values())
    assert ("bound is the best" in notes) == (data["bound_bits_per_dim"]["cosine L_hybrid, learned"] == best)


def test_v_prediction_refuses_eps_at_zero_terminal_snr_and_measures_brightness(reports):
    from hirune.data import load_dataset

    _, report = reports["v-prediction"]
    data, notes = report["data"], " ".join(report["notes"])
    assert data["eps_refused"] is not None and "zero terminal SNR" in data["eps_refused"] and "refused (" in notes
    test = load_dataset("digits", "test").images.flatten(1).mean(1).double()
    assert data["data_mean"] == pytest.approx(float(test.mean()))
    assert data["data_spread"] == pytest.approx(float(test.std()))
    assert list(data["samples"]) == ["linear, eps, leading", "linear, eps, trailing",
                                     "zero-terminal-SNR, v, leading", "zero-terminal-SNR, v, trailing"]
    assert all(-1 <= r["mean"] <= 1 and r["spread"] > 0 for r in data["samples"].values())
    gap = {k: abs(r["mean"] - data["data_mean"]) for k, r in data["samples"].items()}
    closer_by = gap["linear, eps, leading"] - gap["zero-terminal-SNR, v, trailing"]
    pair = ("linear, eps, leading", "zero-terminal-SNR, v, trailing")
    n, spread = data["n"], [data["samples"][k]["spread"] for k in pair]
    error = math.sqrt(sum(s**2 / n for s in spread))
    assert data["closer_by"] == pytest.approx(closer_by) and data["standard_error"] == pytest.approx(error)
    assert ("as Lin et al. say" in notes) == (closer_by > 2 * error)
    assert ("does not hold" in notes) == (closer_by < -2 * error)
    assert ("cannot tell" in notes) == (abs(closer_by) <= 2 * error)


def test_the_brightness_verdict_needs_two_standard_errors():
    from hirune.reproduce.digits import brightness_verdict

    assert "as Lin et al. say" in brightness_verdict(0.03, 0.01)
    assert "cannot tell" in brightness_verdict(0.019, 0.01) and "cannot tell" in brightness_verdict(-0.019, 0.01)
    assert "does not hold" in brightness_verdict(-0.03, 0.01)


class _Oracle:
    """A denoiser that knows x0: the posterior mean is the true one at every step."""

    def __init__(self, process, x0, var_frac=None):
        self.process, self.x0, self.var_frac = process, x0, var_frac

    def __call__(self, x_t, t):
        frac = None if self.var_frac is None else torch.full_like(self.x0, self.var_frac)
        return SimpleNamespace(x0=self.x0, var_frac=frac)


@pytest.mark.parametrize("variance", ["small", "large", "learned"])
def test_the_bound_of_an_oracle_is_its_closed_form(variance):
    """With the true x0, L_t (t >= 1) is 0 with beta-tilde and KL(N(m, beta-tilde) || N(m, beta)) with
    beta; L_0 is the 256-bin decoder's NLL about x0 itself; L_T the prior's KL.  With one draw per
    step the estimate is that sum exactly (learned: v = 1, beta's)."""
    from hirune.data import load_dataset
    from hirune.process import make_process
    from hirune.reproduce.digits import variational_bound

    process = make_process("ddpm", T=100)                 # one draw per step: the exact sum
    x0 = load_dataset("digits", "test").images[:4].double()
    oracle = _Oracle(process, x0, 1.0 if variance == "learned" else None)
    got = variational_bound(SimpleNamespace(denoiser=oracle), x0, variance, draws=process.T)
    betas, tilde = process.betas.double(), process.posterior_variance.double()
    large = variance != "small"
    kl = 0.5 * (torch.log(betas[1:] / tilde[1:]) + tilde[1:] / betas[1:] - 1) if large else torch.zeros(1)
    var0 = float(betas[0] if large else tilde[1])          # beta-tilde_0 = 0 is clipped to beta-tilde_1
    phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    half = 1 / 255 / math.sqrt(var0)
    edge, inner = -math.log(phi(half)), -math.log(phi(half) - phi(-half))
    decoder = torch.where(x0.abs() > 0.999, edge, inner).mean()
    abar = float(process.alphas_cumprod[-1])
    prior = (0.5 * (-1 - math.log(1 - abar) + (1 - abar) + abar * x0**2)).mean()
    expected = (float(kl.sum()) + float(decoder) + float(prior)) / math.log(2)
    assert got == pytest.approx(expected, rel=1e-6)
