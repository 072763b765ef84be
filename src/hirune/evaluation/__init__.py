"""Scoring trained models, as plain functions over networks, denoisers, samples and data
(each family's `evaluate` composes them; `hirune eval` prints the result).

    quality.py         generated samples against held-out data: the shipped evaluator's Frechet
                       distance and class accuracy (digit sets), sliced Wasserstein and energy
                       distance (toys), each beside its real-vs-real value
    likelihood.py      held-out NLL, one dequantization for every family: exact for flows,
                       through the probability-flow ODE for denoisers
    denoising.py       a denoiser's x0 error across noise levels (where a model loses)
    reconstruction.py  an autoencoder's reconstructions: PSNR, KL or codebook use, rFID
    classifier.py      a noise-aware classifier's accuracy across noise levels
    text.py            text-to-image: does the sample show the digit the caption names?
    video.py           moving-digit clips: per-frame class accuracy, motion direction, temporal
                       consistency, smooth motion, per-frame Frechet distance (`video_report`)
"""

from .denoising import NOISE_FRACTIONS, denoising_error, fraction_time

__all__ = ["NOISE_FRACTIONS", "denoising_error", "fraction_time"]


# the run-level functions this package had up to 31bde1a, and what replaced them
GONE = {
    "evaluate_run": "load(run).evaluate(n, ...)", "nll_report": "load(run).nll(n)",
    "text_accuracy": "load(run).evaluate(n, text_accuracy=N)",
    "denoising_report": "load(run).evaluate(n, denoising_error=N)",
    "reconstruction_report": "hirune.evaluation.reconstruction.reconstruction_report(model, dataset, n)",
    "classifier_accuracy": "hirune.evaluation.classifier.classifier_accuracy(model, process, dataset)",
}


def __getattr__(name: str):
    if name in GONE:  # an ImportError, so that `from hirune.evaluation import X` shows the message
        raise ImportError(f"hirune.evaluation.{name} is gone with the family interface; use {GONE[name]}")
    raise AttributeError(f"module 'hirune.evaluation' has no attribute {name!r}")
