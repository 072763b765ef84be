"""Scoring trained runs: samples against held-out data (Frechet distance in the shipped
evaluator's features and class accuracy for the digit sets; sliced Wasserstein and energy
distance for the toys, each beside its real-vs-real value), exact NLL on the toys, and
the accuracy of noise-aware classifiers across noise levels."""

from __future__ import annotations


def evaluate_run(run, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 nll: int = 0, denoiser=None, guided_labels: bool = False) -> dict:
    """Sample `n` and score them: evaluator Frechet distance / class accuracy for digit
    sets, sliced Wasserstein / energy distance for toys, each beside its real-vs-real value.
    nll > 0 (toys): the model's exact log-likelihood of that many test points (nats).
    denoiser: a guided denoiser of the run (labels drawn in turn when guided_labels).
    A classifier run reports its test accuracy at several noise levels instead."""
    from .data import load_dataset
    from .generate import sample_run
    from .metrics import energy_distance, sliced_wasserstein

    if run.is_classifier:
        return {"step": run.step, "dataset": run.cfg.dataset, **classifier_accuracy(run)}
    out, labels = sample_run(run, n, sampler, steps, None, seed, denoiser=denoiser, guided_labels=guided_labels)
    metrics = {"step": run.step, "dataset": run.cfg.dataset, "sampler": sampler or run.cfg.sampler,
               "nfe": out.nfe}
    if run.data.kind == "image":
        from .evaluator import EVALUATED, evaluate_images

        if run.cfg.dataset in EVALUATED:
            metrics.update(evaluate_images(run.cfg.dataset, out.x, labels))
    else:
        test = load_dataset(run.cfg.dataset, "test").data[:n].double()
        ref = load_dataset(run.cfg.dataset, "train").data[:n].double()
        x = out.x.double()
        metrics.update({"sliced_wasserstein": sliced_wasserstein(x, test),
                        "energy_distance": energy_distance(x, test),
                        "sliced_wasserstein_real_vs_real": sliced_wasserstein(ref, test),
                        "energy_distance_real_vs_real": energy_distance(ref, test)})
    if nll:
        if run.data.kind != "toy":
            raise ValueError("--nll is for 2-D toys here (exact divergence); images come with issue 5")
        metrics.update(toy_nll(run, nll))
    return metrics


def classifier_accuracy(run, fractions=(0.0, 0.25, 0.5, 0.75, 0.9)) -> dict:
    """Test-split accuracy of a noise-aware classifier at times t = fraction of the way
    from t_min to t_max (x_t drawn with a fixed seed)."""
    import torch

    from .data import load_dataset
    from .denoiser import time_batch

    test = load_dataset(run.cfg.dataset, "test")
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for f in fractions:
            p = run.process
            t = round(f * (p.T - 1)) if p.discrete else p.t_min + f * (p.t_max - p.t_min)
            x_t = p.q_sample(test.data, torch.tensor(float(t)), torch.randn(test.data.shape, generator=g))
            logits = run.model(x_t, time_batch(t, x_t))
            out[f"accuracy_t{t:g}"] = float((logits.argmax(1) == test.labels).double().mean())
    return out


def toy_nll(run, n: int) -> dict:
    """Mean negative log-likelihood (nats) of n test points under the model's probability-flow
    ODE with the exact divergence, its standard error over points, and the true density's
    NLL of the same points where the toy has one (the floor a perfect model would reach)."""
    import math

    from .data import load_dataset
    from .data.toys import TOYS
    from .likelihood import ode_log_likelihood

    x = load_dataset(run.cfg.dataset, "test").data[:n].double()
    run.model.double()
    try:
        result = ode_log_likelihood(run.denoiser, x)
    finally:
        run.model.float()
    out = {"nll_nats": float(result.nll.mean()),
           "nll_stderr": float(result.nll.std() / math.sqrt(len(x))),
           "nll_points": len(x), "nll_nfe": result.nfe}
    mixture = getattr(TOYS.get(run.cfg.dataset), "mixture", None)
    if mixture is not None:
        out["nll_true_nats"] = float(-mixture.log_prob(x).mean())
    return out


