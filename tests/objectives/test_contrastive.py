"""CLIP's symmetric InfoNCE loss (`objectives/contrastive.py`) against a float64 reference
written from the formula with Python's math module, values and gradients; a broken variant
(one direction only) is shown to fail the comparison."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hirune.objectives.contrastive import contrastive_loss


def reference(image: list[list[float]], text: list[list[float]], scale: float) -> float:
    """(1/2N) sum_i [-log softmax_j(s <I_i, T_j>)_i - log softmax_j(s <I_j, T_i>)_i], float64."""
    n = len(image)
    sim = [[scale * sum(a * b for a, b in zip(image[i], text[j])) for j in range(n)] for i in range(n)]
    def nll(row: list[float], k: int) -> float:
        top = max(row)
        return -(row[k] - top - math.log(sum(math.exp(v - top) for v in row)))
    image_to_text = sum(nll(sim[i], i) for i in range(n)) / n
    text_to_image = sum(nll([sim[j][i] for j in range(n)], i) for i in range(n)) / n
    return (image_to_text + text_to_image) / 2


def unit_rows(n: int, d: int, dtype=torch.float64) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, dtype=dtype), dim=-1)


@pytest.mark.parametrize("scale", [1.0, 14.285714, 100.0])
def test_loss_equals_the_float64_reference(scale):
    image, text = unit_rows(7, 5), unit_rows(7, 5)
    want = reference(image.tolist(), text.tolist(), scale)
    out = contrastive_loss(image, text, torch.tensor(scale, dtype=torch.float64))
    assert out.loss.dtype == torch.float64
    assert abs(float(out.loss) - want) < 1e-12
    # float32 embeddings (training): the same to float32 rounding
    out32 = contrastive_loss(image.float(), text.float(), torch.tensor(scale))
    assert abs(float(out32.loss) - want) < 1e-5 * max(1.0, want)
    # per-example values average to the loss
    assert abs(float(out.per_sample.mean()) - want) < 1e-12 and out.per_sample.shape == (7,)


def test_gradients_equal_the_reference_by_autograd_and_finite_differences():
    image, text = unit_rows(6, 4).requires_grad_(), unit_rows(6, 4).requires_grad_()
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    contrastive_loss(image, text, log_scale.exp()).loss.backward()
    eps = 1e-6
    for tensor, k in ((image, (2, 1)), (text, (4, 3))):  # central differences of the reference
        plus, minus = tensor.detach().clone(), tensor.detach().clone()
        plus[k] += eps
        minus[k] -= eps
        args = lambda t: (t.tolist(), text.tolist()) if tensor is image else (image.tolist(), t.tolist())
        s = math.exp(float(log_scale.detach()))
        numeric = (reference(*args(plus), s) - reference(*args(minus), s)) / (2 * eps)
        assert abs(float(tensor.grad[k]) - numeric) < 1e-6
    s = float(log_scale.detach())
    numeric = (reference(image.tolist(), text.tolist(), math.exp(s + eps))
               - reference(image.tolist(), text.tolist(), math.exp(s - eps))) / (2 * eps)
    assert abs(float(log_scale.grad) - numeric) < 1e-6


def test_a_loss_of_one_direction_only_fails_the_reference():
    """Harness: the image -> text half alone (a plausible slip) is not the symmetric loss."""
    image, text = unit_rows(7, 5), unit_rows(7, 5)
    one_way = F.cross_entropy(10.0 * image @ text.T, torch.arange(7))
    assert abs(float(one_way) - reference(image.tolist(), text.tolist(), 10.0)) > 1e-3


def test_terms_and_shape_errors():
    image = unit_rows(4, 3)
    out = contrastive_loss(image, image, torch.tensor(100.0, dtype=torch.float64))
    assert float(out.terms["batch_accuracy"]) == 1.0 and float(out.terms["logit_scale"]) == 100.0
    with pytest.raises(ValueError, match=r"both be \(N, D\)"):
        contrastive_loss(image, image[:3], torch.tensor(1.0))
