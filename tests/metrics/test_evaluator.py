"""The shipped evaluator: accurate on held-out digits, and its Frechet distance ranks real
data above degraded data above noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hirune.data import load_dataset
from hirune.metrics.evaluator import evaluate_images, features_and_logits, frechet_distance, load_evaluator


@pytest.mark.parametrize("dataset,min_accuracy", [("digits", 0.95), ("mnist5k", 0.97)])
def test_shipped_evaluator_is_accurate(dataset, min_accuracy):
    test = load_dataset(dataset, "test")
    _, logits = features_and_logits(load_evaluator(dataset), test.images)
    assert float((logits.argmax(1) == test.labels).double().mean()) >= min_accuracy


def test_frechet_ranks_real_above_degraded_above_noise():
    train = load_dataset("mnist5k", "train")
    g = torch.Generator().manual_seed(0)
    real = train.images[torch.randperm(len(train), generator=g)[:500]]
    blurred = F.avg_pool2d(real, 3, stride=1, padding=1)  # a deliberately degraded "model"
    noise = torch.rand(500, 1, 28, 28, generator=g) * 2 - 1
    images = {"real": real, "blurred": blurred, "noise": noise}
    reports = {name: evaluate_images("mnist5k", x) for name, x in images.items()}
    scores = {name: report["frechet_distance"] for name, report in reports.items()}
    ref = reports["real"]["frechet_real_vs_real"]
    assert scores["real"] < 2 * ref
    assert scores["real"] < scores["blurred"] < scores["noise"]


def test_class_accuracy_of_labelled_images():
    test = load_dataset("digits", "test")
    good = evaluate_images("digits", test.images, test.labels)
    wrong = evaluate_images("digits", test.images, (test.labels + 1) % 10)
    assert good["class_accuracy"] > 0.95 and wrong["class_accuracy"] < 0.05


def test_frechet_distance_closed_form():
    a = torch.randn(4000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    b = a * 2 + 1  # N(1, 4I) vs N(0, I): |mu|^2 + tr(I + 4I - 2*2I) = 3 + 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.05)


def test_bad_input():
    with pytest.raises(ValueError, match="evaluators exist"):
        load_evaluator("cifar10")
    with pytest.raises(ValueError, match="expects"):
        features_and_logits(load_evaluator("digits"), torch.zeros(2, 1, 28, 28))


@pytest.mark.slow  # opt in with --runslow (the suite's 10-minute budget)
def test_the_domains_of_mnist5k_are_read_by_its_evaluator():
    """Inverted digits are read inverted back: the inverted test split scores as the test
    split does, and plain digits are far from the inverted domain."""
    train = load_dataset("mnist5k", "train")
    g = torch.Generator().manual_seed(0)
    real = train.images[torch.randperm(len(train), generator=g)[:500]]
    net, inverted = load_evaluator("mnist5k"), load_evaluator("mnist5k-inverted")
    assert torch.equal(features_and_logits(inverted, -real)[0], features_and_logits(net, real)[0])
    near = evaluate_images("mnist5k-inverted", -real)
    assert near["frechet_distance"] < 2 * near["frechet_real_vs_real"]
    assert evaluate_images("mnist5k-inverted", real)["frechet_distance"] > 10 * near["frechet_distance"]
    thick = load_dataset("mnist5k-thick", "train").images
    assert evaluate_images("mnist5k-thick", thick[torch.randperm(len(thick), generator=g)[:500]])[
        "frechet_distance"] < evaluate_images("mnist5k-thick", real)["frechet_distance"]
