"""A noise-aware classifier's accuracy across noise levels."""

from __future__ import annotations

import torch
from torch import nn

from ..process.denoiser import time_batch
from .denoising import fraction_time


def classifier_accuracy(classifier: nn.Module, process, dataset: str,
                        fractions=(0.0, 0.25, 0.5, 0.75, 0.9)) -> dict:
    """Test-split accuracy of `classifier(x_t, t) -> logits` at times t = fraction of the way
    from t_min to t_max of `process` (x_t drawn with a fixed seed)."""
    from ..data import load_dataset

    test = load_dataset(dataset, "test")
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for f in fractions:
            t = fraction_time(process, f)
            x_t = process.q_sample(test.data, torch.tensor(float(t)), torch.randn(test.data.shape, generator=g))
            logits = classifier(x_t, time_batch(t, x_t))
            out[f"accuracy_t{t:g}"] = float((logits.argmax(1) == test.labels).double().mean())
    return out
