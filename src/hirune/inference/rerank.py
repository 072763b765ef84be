"""Reranking (DALL-E, Ramesh et al. 2021, sec. 2.5): draw N candidates per caption and keep
the one a contrastive image-text model scores highest against it.

    scorer = load_scorer("runs/clip-mnist5k", dataset="mnist5k")   # a CLIP run, loaded light
    best, scores = rerank(candidates, prompts, scorer)             # candidates (P, N, C, H, W)

The scorer is anything with `similarity(images (I, C, H, W), texts: list[str]) -> (I, T)`
scores, a CLIP run's family object in practice.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rerank(candidates: Tensor, prompts: list[str], scorer) -> tuple[Tensor, Tensor]:
    """The best of each prompt's candidates: candidates (P, N, C, H, W), one prompt per row;
    returns (images (P, C, H, W), their indices among the N (P,)).  Ties: the first."""
    if candidates.dim() != 5 or len(candidates) != len(prompts):
        raise ValueError(f"candidates must be (P={len(prompts)} prompts, N, C, H, W), got {tuple(candidates.shape)}")
    best = []
    with torch.no_grad():
        for images, prompt in zip(candidates, prompts):
            scores = torch.as_tensor(scorer.similarity(images, [prompt]))
            if scores.shape != (len(images), 1):
                raise ValueError(f"the scorer's similarity gave shape {tuple(scores.shape)} for {len(images)} "
                                 "images and 1 text; expected (images, texts)")
            best.append(int(scores[:, 0].argmax()))
    index = torch.tensor(best)
    return candidates[torch.arange(len(prompts)), index], index


def check_scorer(scorer, dataset: str) -> None:
    """A loaded run fit to rerank samples of `dataset`: a CLIP run trained on that dataset."""
    if getattr(scorer, "name", None) != "clip":
        raise ValueError(f"--clip needs a CLIP run (family 'clip', e.g. `hirune train clip-mnist5k`), not a "
                         f"{getattr(scorer, 'name', '?')} run")
    if scorer.data.name != dataset:
        raise ValueError(f"the CLIP run was trained on {scorer.data.name}, the samples are of {dataset}; "
                         "they must match")


def load_scorer(path, dataset: str):
    """The CLIP run at `path`, loaded light (`training.loading.load`) and checked (`check_scorer`)."""
    from ..training.loading import load

    scorer = load(path)
    check_scorer(scorer, dataset)
    return scorer


def sample_reranked(generate, prompts: list[str], n: int, scorer) -> tuple[Tensor, Tensor]:
    """n candidates per prompt from `generate(prompts) -> images` (each prompt repeated n
    times, in order), the best of each kept: (images (P, C, H, W), indices (P,))."""
    if n < 1:
        raise ValueError(f"--rerank must be >= 1 candidates per prompt, got {n}")
    images = generate([p for p in prompts for _ in range(n)])
    return rerank(images.view(len(prompts), n, *images.shape[1:]), prompts, scorer)
