"""Text to image: does a sample show the digit its caption names?"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def text_accuracy(generate: Callable[[list[str], int], Tensor], dataset: str, n: int = 200) -> dict:
    """For every caption phrasing of training and every held-out one (`data.captions`), n
    samples `generate(prompts, seed offset k) -> images` from captions naming the digits in
    turn, and the share the evaluator of `dataset` classifies as the digit named.  Held-out
    phrasings measure whether the model follows the caption's meaning rather than the
    strings it was trained on."""
    from ..data.captions import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, caption
    from ..metrics.evaluator import features_and_logits, load_evaluator

    net = load_evaluator(dataset)
    labels = torch.arange(n) % 10
    out: dict = {}
    for split, templates in (("train", TRAIN_TEMPLATES), ("held_out", HELD_OUT_TEMPLATES)):
        scores = {}
        for k, template in enumerate(templates):
            x = generate([caption(int(y), template=template) for y in labels], k)
            scores[template] = float((features_and_logits(net, x)[1].argmax(1) == labels).double().mean())
        out[f"{split}_phrasings"] = scores
        out[f"{split}_phrasing_accuracy"] = sum(scores.values()) / len(scores)
    return out
