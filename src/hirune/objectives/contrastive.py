"""CLIP's symmetric InfoNCE loss over the global batch (Radford et al. 2021, fig. 3).

    logits = logit_scale * I @ T^T                       (N, N), I and T unit rows
    loss   = (CE(logits, arange N) + CE(logits^T, arange N)) / 2

row i of the image embeddings I and of the text embeddings T come from the same example.

Under several processes each rank holds b = N / world rows.  `gather=True` all-gathers the
embeddings with their gradients (`torch.distributed.nn.functional.all_gather`), so every
rank computes the loss of the whole global batch, identical on every rank.  The gradient
arithmetic: all_gather's backward sums, over the ranks, the gradients every rank's loss
sends to the rows it gathered, so each rank's own embeddings receive world x dL/d(rows);
DDP then averages the parameter gradients over the ranks, dividing that factor away; the
temperature, used directly on every rank, gets dL/ds on each and their average is dL/ds.
So the gradients equal one process's with the whole batch.  Without the gather (each rank
contrasting its own b rows) the loss is a different one -- fewer negatives -- which the
distributed test catches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .loss import Loss


def gather_rows(x: Tensor) -> tuple[Tensor, int]:
    """Every rank's rows of x (b, D), concatenated in rank order with their gradients
    (world b, D), and where this rank's rows start."""
    import warnings

    import torch.distributed as dist
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # torch 2.13 calls it deprecated; its autograd is what is wanted here
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        rows = all_gather(x.contiguous())
    return torch.cat(rows, dim=0), dist.get_rank() * x.shape[0]


def contrastive_logits(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor) -> Tensor:
    """Scaled cosine similarities (N_images, N_texts) of unit rows."""
    return logit_scale * image_emb @ text_emb.T


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, gather: bool = False) -> Loss:
    """The symmetric InfoNCE loss.  image_emb, text_emb: (b, D) unit rows of this rank's
    examples; logit_scale: a scalar (exp of the clamped log scale).  gather: all-gather the
    rows of every rank first (torch.distributed's default group), so the loss is the global
    batch's.  per_sample (b,): the mean of each own example's two cross-entropies."""
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"image and text embeddings must both be (N, D); got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    start, b = 0, image_emb.shape[0]
    if gather:
        image_emb, start = gather_rows(image_emb)
        text_emb, _ = gather_rows(text_emb)
    dtype = torch.promote_types(image_emb.dtype, torch.float32)  # float32 under autocast, float64 stays
    logits = contrastive_logits(image_emb.to(dtype), text_emb.to(dtype), logit_scale.to(dtype))
    target = torch.arange(len(logits), device=logits.device)
    image_to_text = F.cross_entropy(logits, target, reduction="none")     # row i: image i among all texts
    text_to_image = F.cross_entropy(logits.T, target, reduction="none")   # row j: text j among all images
    loss = (image_to_text.mean() + text_to_image.mean()) / 2
    mine = slice(start, start + b)
    per_sample = ((image_to_text[mine] + text_to_image[mine]) / 2).detach()
    with torch.no_grad():
        accuracy = (logits.argmax(1) == target).float().mean()
    terms = {"image_to_text": image_to_text.mean().detach(), "text_to_image": text_to_image.mean().detach(),
             "logit_scale": logit_scale.detach().float(), "batch_accuracy": accuracy}
    return Loss(loss, per_sample, torch.zeros(b, device=logits.device), terms)
