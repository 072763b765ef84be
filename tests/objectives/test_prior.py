"""DreamBooth's prior-preservation loss on hand-made tensors: mean instance + lambda x mean
class, the gradient of each row, and a broken variant (the mean over all rows) that fails."""

from __future__ import annotations

import pytest
import torch

from hirune.objectives import prior_preservation_loss


def _broken(per_sample, is_class, prior_weight):  # the mean over all rows, lambda on the class rows
    w = torch.where(is_class, torch.full_like(per_sample, prior_weight), torch.ones_like(per_sample))
    return (w * per_sample).mean()


def test_the_loss_is_the_instance_mean_plus_lambda_times_the_class_mean():
    per_sample = torch.tensor([1.0, 10.0, 3.0, 20.0, 5.0, 60.0], requires_grad=True)
    is_class = torch.tensor([False, True, False, True, False, True])
    for weight, expected in ((0.0, 3.0), (1.0, 3.0 + 30.0), (0.5, 3.0 + 15.0)):
        loss, instance, prior = prior_preservation_loss(per_sample, is_class, weight)
        assert loss.item() == pytest.approx(expected) and instance.item() == 3.0 and prior.item() == 30.0
    loss, _, _ = prior_preservation_loss(per_sample, is_class, 0.5)
    loss.backward()   # d/d instance row = 1/3, d/d class row = 0.5/3
    assert torch.allclose(per_sample.grad, torch.tensor([1 / 3, 0.5 / 3] * 3))


def test_unequal_halves_weigh_each_kind_by_its_own_count():
    per_sample = torch.tensor([2.0, 4.0, 9.0])
    is_class = torch.tensor([False, False, True])
    loss, _, _ = prior_preservation_loss(per_sample, is_class, 1.0)
    assert loss.item() == pytest.approx(3.0 + 9.0)
    assert _broken(per_sample, is_class, 1.0).item() != pytest.approx(loss.item())   # the broken variant: 5.0


def test_the_broken_variant_fails_the_hand_made_case():
    per_sample = torch.tensor([1.0, 10.0, 3.0, 20.0, 5.0, 60.0])
    is_class = torch.tensor([False, True, False, True, False, True])
    loss, _, _ = prior_preservation_loss(per_sample, is_class, 1.0)
    assert loss.item() == pytest.approx(33.0)
    assert _broken(per_sample, is_class, 1.0).item() == pytest.approx(16.5)          # half of it


def test_a_batch_without_both_kinds_or_of_other_shapes_is_refused():
    with pytest.raises(ValueError, match="instance rows and class rows"):
        prior_preservation_loss(torch.ones(4), torch.zeros(4, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="must both be"):
        prior_preservation_loss(torch.ones(4), torch.tensor([True, False]), 1.0)


def test_lambda_zero_may_have_instance_rows_alone():
    """prior_weight = 0 is plain fine-tuning on the instance: no class rows needed, the loss is
    their mean; with prior_weight > 0 a batch without class rows is still refused."""
    import pytest
    import torch

    from hirune.objectives.prior import prior_preservation_loss

    rows = torch.tensor([1.0, 2.0, 6.0])
    loss, instance, prior = prior_preservation_loss(rows, torch.zeros(3, dtype=torch.bool), 0.0)
    assert float(loss) == 3.0 and float(instance) == 3.0 and float(prior) == 0.0
    with pytest.raises(ValueError, match="needs instance rows and class rows"):
        prior_preservation_loss(rows, torch.zeros(3, dtype=torch.bool), 1.0)
