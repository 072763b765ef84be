"""Scoring a contrastive image-text model: zero-shot classification by prompts, and
retrieval between images and captions.

    zero_shot_labels(image_emb, class_emb)             the nearest class prompt of each image
    class_embeddings(embed_text, templates)            one unit vector per digit: a prompt
                                                       ensemble over the templates
    recall_at_1(image_emb, text_emb, captions)         image -> text and text -> image
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def class_embeddings(embed_text: Callable[[list[str]], Tensor], templates: Sequence[str],
                     num_classes: int = 10, all_attributes: bool = False) -> Tensor:
    """(num_classes, D) unit vectors: for each digit, the unit text embeddings of its prompts
    under every template averaged and renormalised -- CLIP's prompt ensembling (sec. 3.1.4)
    in embedding space.  The prompts (`data.captions.caption`) carry the plain attributes
    (regular thickness, upright: "an image of a seven"), or with `all_attributes` each of the
    9 thickness x slant variants ("a thin seven, slanted left", ...), all averaged.  One
    template, plain: that prompt's embedding."""
    from ..data.captions import caption

    variants = [(th, sl) for th in range(3) for sl in range(3)] if all_attributes else [(1, 1)]
    prompts = [caption(k, th, sl, t) for t in templates for th, sl in variants for k in range(num_classes)]
    emb = embed_text(prompts).reshape(len(templates) * len(variants), num_classes, -1)
    return F.normalize(emb.mean(0), dim=-1)


def zero_shot_labels(image_emb: Tensor, class_emb: Tensor) -> Tensor:
    """(N,) the class whose prompt embedding is nearest (cosine) to each unit image row."""
    return (image_emb @ class_emb.T).argmax(1)


def recall_at_1(image_emb: Tensor, text_emb: Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Row i of both embeddings is example i, described by captions[i].  image -> text: the
    caption nearest to image i is correct where it is the same string as captions[i] (the
    digit captions repeat, and equal strings have equal embeddings); text -> image: the
    image nearest to caption i is correct where its own caption is that string."""
    sim = image_emb @ text_emb.T
    codes = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    ids = torch.tensor([codes[c] for c in captions], device=sim.device)
    image_to_text = (ids[sim.argmax(1)] == ids).double().mean()
    text_to_image = (ids[sim.argmax(0)] == ids).double().mean()
    return {"recall_image_to_text": float(image_to_text), "recall_text_to_image": float(text_to_image),
            "distinct_captions": len(codes)}


def zero_shot_report(image_emb: Tensor, embed_text: Callable[[list[str]], Tensor], labels: Tensor,
                     template_sets: dict[str, Sequence[str]]) -> dict:
    """Zero-shot accuracy of the unit image embeddings `image_emb` (N, D), labelled `labels`,
    with every template alone and with each set's ensembles:
    {"zero_shot_<set>": the set's templates ensembled (plain attributes),
    "zero_shot_<set>_all_attributes": the set's templates x the 9 attribute variants ensembled,
    "zero_shot_<set>_phrasings": {template: accuracy, plain attributes}}."""
    out: dict = {}
    for name, templates in template_sets.items():
        per = {t: float((zero_shot_labels(image_emb, class_embeddings(embed_text, [t])) == labels).double().mean())
               for t in templates}
        ensemble = zero_shot_labels(image_emb, class_embeddings(embed_text, templates))
        out[f"zero_shot_{name}"] = float((ensemble == labels).double().mean())
        every = zero_shot_labels(image_emb, class_embeddings(embed_text, templates, all_attributes=True))
        out[f"zero_shot_{name}_all_attributes"] = float((every == labels).double().mean())
        out[f"zero_shot_{name}_phrasings"] = per
    return out
