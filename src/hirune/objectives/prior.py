"""DreamBooth's prior-preservation loss (Ruiz et al. 2023, eq. 2): the diffusion loss on the
instance images under the instance prompt plus lambda times the loss on class images that
the frozen model generated under the class prompt, which keeps the class prior (what "a
seven" looks like) while the identifier learns the subject."""

from __future__ import annotations

from torch import Tensor


def prior_preservation_loss(per_sample: Tensor, is_class: Tensor, prior_weight: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, instance term, class term): per_sample (B,) the loss of each row (with its
    graph), is_class (B,) bool (True: a class image under the class prompt); loss = the mean
    over the instance rows + prior_weight x the mean over the class rows.  Both kinds must
    be present, but for prior_weight = 0 (plain fine-tuning on the instance), where the
    batch may be instance rows alone (the class term is then 0)."""
    is_class = is_class.to(device=per_sample.device, dtype=bool)
    if per_sample.shape != is_class.shape or per_sample.dim() != 1:
        raise ValueError(f"per_sample {tuple(per_sample.shape)} and is_class {tuple(is_class.shape)} must both be (B,)")
    if prior_weight == 0 and not is_class.any():
        instance = per_sample.mean()
        return instance, instance, instance.new_zeros(())
    if is_class.all() or not is_class.any():
        raise ValueError("the prior-preservation loss needs instance rows and class rows in the batch; got "
                         f"{int(is_class.sum())} class rows of {len(is_class)}")
    instance, prior = per_sample[~is_class].mean(), per_sample[is_class].mean()
    return instance + prior_weight * prior, instance, prior
