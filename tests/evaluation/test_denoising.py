"""The denoising error per noise level (`evaluation.denoising.denoising_error`): the posterior mean of
Gaussian data reaches its closed form sigma(t)^2 and denoisers that are wrong are caught;
the exact denoiser of the toy mixture beats a wrong mixture's at every level of a run's
report; `hirune eval --denoising-error` prints it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hirune import make_process
from hirune.cli import main
from hirune.process.denoiser import Denoiser
from hirune.evaluation.denoising import NOISE_FRACTIONS, denoising_error, fraction_time
from hirune.families.diffusion_eval import denoising_report


def posterior_mean_denoiser(process, time_shift: float = 1.0) -> Denoiser:
    """Data N(0, I) on a variance-preserving process: E[x0 | x_t] = alpha x_t, i.e. the eps
    prediction sigma x_t.  time_shift != 1 reads sigma at the wrong time (a broken variant)."""
    def model(x, t):
        return process.coefficients(t.double() * time_shift, x).sigma * x
    return Denoiser(model, process, "eps")


@pytest.mark.parametrize("name", ["ddpm", "vp"])
def test_the_posterior_mean_of_gaussian_data_reaches_sigma_squared(name):
    process = make_process(name)
    # not from seed 0, which draws the function's noise: x0 = eps would be correlated noise
    x0 = torch.randn(20_000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors = denoising_error(posterior_mean_denoiser(process), x0)
    assert len(errors) == len(NOISE_FRACTIONS)
    for f, (key, error) in zip(NOISE_FRACTIONS, errors.items()):
        t = fraction_time(process, f)
        assert key == f"x0_mse_t{t:g}"
        sigma2 = float(process.coefficients(torch.tensor(t, dtype=torch.float64), x0).sigma.flatten()[0]) ** 2
        assert error == pytest.approx(sigma2, rel=0.03, abs=1e-6), (t, error, sigma2)
    # broken variants the check must reject: sigma read at the wrong time, no denoising at all
    for broken in (posterior_mean_denoiser(process, time_shift=0.8),
                   Denoiser(lambda x, t: torch.zeros_like(x), process, "eps")):
        bad = denoising_error(broken, x0)
        assert any(abs(e / max(s, 1e-6) - 1) > 0.05 for e, s in zip(bad.values(), errors.values()))


def test_exact_mixture_denoiser_beats_a_wrong_one_in_a_runs_report(tmp_path):
    from hirune.data.toys import toy_mixture
    from hirune.process.mixture import GaussianMixture
    from hirune.training.presets import preset_config
    from hirune.training.trainer import Trainer

    run = Trainer(preset_config("flow-gaussian-mixture", {"out": str(tmp_path / "r")})).family
    truth = toy_mixture("gaussian_mixture")
    run.denoiser = truth.denoiser(run.process, "velocity")
    exact = denoising_report(run, 2000)
    run.denoiser = GaussianMixture(truth.means * 1.2, truth.stds, truth.weights).denoiser(run.process, "velocity")
    wrong = denoising_report(run, 2000)
    assert list(exact) == list(wrong)
    # in between, the wrong mixture errs more; at t_min + 1% both are nearly the identity, and at
    # t_max (x_t pure noise) both answer with the data mean, 0 for this symmetric mixture
    for key in list(exact)[1:-1]:
        assert wrong[key] > exact[key], key


def test_eval_prints_the_denoising_error(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "ddpm-digits", "steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8",
                 "class_conditional=true", "eval_samples=0", f"out={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "8", "--steps", "2", "--denoising-error", "16"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keys = [k for k in metrics if k.startswith("x0_mse_t")]
    assert keys[0] == "x0_mse_t10" and keys[-1] == "x0_mse_t999" and len(keys) == len(NOISE_FRACTIONS)
    assert all(math.isfinite(metrics[k]) for k in keys)
