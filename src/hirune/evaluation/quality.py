"""Generated samples against held-out data."""

from __future__ import annotations

from torch import Tensor


def sample_quality(dataset: str, kind: str, x: Tensor, labels: Tensor | None = None) -> dict:
    """Images of the digit sets: the evaluator's Frechet distance to the test split, its
    class accuracy on labelled samples, and the real-vs-real reference
    (`metrics.evaluate_images`); other images: nothing.  Toys: sliced Wasserstein and energy
    distance of the n = len(x) samples to n test points, beside the same distances between
    n training and n test points."""
    from ..data import load_dataset
    from ..metrics import EVALUATED, energy_distance, evaluate_images, sliced_wasserstein

    if kind == "image":
        return evaluate_images(dataset, x, labels) if dataset in EVALUATED else {}
    n = len(x)
    test = load_dataset(dataset, "test").data[:n].double()
    ref = load_dataset(dataset, "train").data[:n].double()
    x = x.double()
    return {"sliced_wasserstein": sliced_wasserstein(x, test), "energy_distance": energy_distance(x, test),
            "sliced_wasserstein_real_vs_real": sliced_wasserstein(ref, test),
            "energy_distance_real_vs_real": energy_distance(ref, test)}
