"""Scoring a trained diffusion run: its samples against held-out data, its likelihood
through the probability-flow ODE, its denoising error across noise levels and, for text
runs, whether its samples show what their captions say (`hirune eval`)."""

from __future__ import annotations

from ..evaluation import denoising
from ..evaluation.likelihood import nll_report as _nll_report
from ..evaluation.likelihood import ode_log_prob
from ..evaluation.quality import sample_quality
from ..evaluation.text import text_accuracy as _text_accuracy
from . import embedding
from .base import check_eval_counts, check_test_count


def evaluate(run, n: int | None = None, *, sampler: str | None = None, steps: int | None = None, seed: int = 0, nll: int = 0,
             denoiser=None, guided_labels: bool = False, text_accuracy: int = 0, denoising_error: int = 0) -> dict:
    """n samples (None: EVAL_SAMPLES) scored against the test split (`evaluation.quality`), with `denoiser` (a
    guided one: labels drawn in turn when guided_labels); nll > 0: the NLL of that many test
    examples; text_accuracy > 0: that many samples per caption phrasing; denoising_error >
    0: the x0 error on that many test examples.  The counts are checked before anything is
    sampled (`check_eval_counts`)."""
    n = check_eval_counts(run, run.data, n, nll, text_accuracy, denoising_error)
    metrics = {"step": run.step, "dataset": run.data.name, "sampler": sampler or run.config.sampler}
    if getattr(run.config, "clip", ""):  # an unCLIP decoder: decode the embeddings of n test images
        embeddings, labels = embedding.test_embeddings(run, n)
        out, _ = run.generate(n, sampler, steps, None, seed, denoiser=denoiser, embeddings=embeddings)
        metrics["drawn_from"] = "the CLIP image embeddings of test images (class_accuracy: their class kept)"
    else:
        out, labels = run.generate(n, sampler, steps, None, seed, denoiser=denoiser, guided_labels=guided_labels)
    metrics["nfe"] = out.nfe
    metrics.update(sample_quality(run.data.name, run.data.kind, out.x, labels))
    if nll:
        metrics.update(nll_report(run, nll, seed))
    if text_accuracy:
        metrics.update(text_report(run, text_accuracy, sampler, steps, seed, denoiser))
    if denoising_error:
        metrics.update(denoising_report(run, denoising_error, seed))
    return metrics


def nll_report(run, n: int, seed: int = 0) -> dict:
    """The NLL of n held-out examples through the probability-flow ODE of the unclipped
    denoiser (exact divergence on toys, Hutchinson on images; `evaluation.likelihood`)."""
    if run.first_stage is not None:
        raise ValueError("--nll needs a density over pixels; a latent diffusion run models its autoencoder's "
                         "latents (and the decoder is not invertible)")
    check_test_count(run.data, "nll", n)
    return _nll_report(run.data, n, seed, ode_log_prob(run.denoiser, run.model, run.data.kind == "image"))


def denoising_report(run, n: int = 256, seed: int = 0) -> dict[str, float]:
    """`evaluation.denoising_error` of the run's denoiser on its first n test examples
    (latent runs: their scaled latents), unconditionally (the null label; a text run's
    empty caption).  For comparing networks at the same step: the error at middle noise
    levels is where a digit's layout is decided."""
    from ..data import load_dataset

    check_test_count(run.data, "denoising_error", n)
    x0 = load_dataset(run.data.name, "test").data[:n].to(run.device)
    if run.first_stage is not None:
        x0 = run.encode(x0)
    cond = run.condition(prompts=[""] * len(x0) if run.text is not None else None)
    return denoising.denoising_error(run.denoiser, x0, seed=seed, **cond)


def text_report(run, n: int = 200, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                denoiser=None) -> dict:
    """`evaluation.text_accuracy` of a text run: n samples per phrasing, seed + k for the k-th."""
    if run.text is None:
        raise ValueError("text accuracy needs a text-conditioned run (text_encoder=tiny|minilm|tiny+minilm)")

    def generate(prompts, k):
        return run.generate(n, sampler, steps, None, seed + k, denoiser=denoiser, prompts=prompts,
                            progress=False)[0].x

    return _text_accuracy(generate, run.data.name, n)
