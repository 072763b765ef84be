"""unCLIP's decoder (Ramesh et al. 2022, "DALL-E 2", sec. 2.1): a diffusion run conditioned on
the CLIP image embedding of its training images, the setting `clip=RUN` of the diffusion family.

    z = clip.embed_image(x0)                   (N, D) unit vectors of a trained, frozen clip run
    the UNet reads z twice (`models.unet`, `embed_dim`): projected into the time embedding,
    and as `embed_tokens` extra context tokens for cross-attention (after the caption's)

The decoder inverts CLIP's image encoder: p(x | z), sampled from a given embedding -- an
image's (variations, interpolations, text diffs: `inference.unclip`), or one a prior drew
from a caption (text to image).  The training images are embedded once, in `prepare` (as
latent diffusion encodes its latents once); each example's embedding is then looked up by
its index.  The CLIP run is the reference "clip" (copied into RUN/references/clip.safetensors
like a first stage); its dataset must be the run's.  Latent decoders (`autoencoder=` as
well) embed the pixels and diffuse the latents.

Classifier-free guidance (sec. 2.1): the embedding is set to zero, the null condition, with
probability `p_uncond` (0.1); on a text-conditioned decoder the caption is also dropped to ""
with probability `p_text_drop` (0.5), independently.  Both are drawn in `Diffusion.draw`.  At
sampling the null condition is the zero embedding (and the empty caption).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import spread

NETWORKS = ("unet",)            # the networks with embedding conditioning (UNetConfig.embed_dim)


def check(cfg, config) -> None:
    """A decoder's settings (before anything is built): a UNet, no class labels, no reflow."""
    if cfg.model not in NETWORKS:
        raise ValueError(f"model={cfg.model!r} is not valid for an unCLIP decoder (clip={config.clip}); valid: "
                         f"{list(NETWORKS)}")
    if config.class_conditional or config.reflow_from:
        raise ValueError(f"clip={config.clip!r} (an unCLIP decoder) is not valid with class_conditional=true or "
                         "reflow_from; valid: a decoder conditioned on the CLIP embedding (and optionally text)")


def check_clip(clip, dataset: str) -> None:
    """The reference must be a clip run trained on the decoder's dataset."""
    if getattr(clip, "name", None) != "clip":
        where = getattr(clip, "run_dir", "the clip reference")
        raise ValueError(f"clip={where} is not valid; valid: a trained clip run (family 'clip', e.g. "
                         f"runs/clip-mnist5k), not a {getattr(clip, 'name', type(clip).__name__)} run")
    if clip.data.name != dataset:
        raise ValueError(f"dataset={dataset!r} is not valid for this decoder; valid: {clip.data.name!r}, the "
                         "dataset its CLIP run was trained on")


def attach(run) -> None:
    """Put the decoder's CLIP run (reference "clip") on the run's device, frozen: `run.clip`."""
    run.clip = run.references["clip"]
    check_clip(run.clip, run.data.name)
    run.clip.model.to(run.device).eval().requires_grad_(False)
    run.clip.device = run.device


def network_config(run) -> dict:
    return {"embed_dim": run.clip.model.config.embed_dim}


def embed_training_images(run, images: Tensor) -> Tensor:
    """The CLIP image embeddings (N, D) of the training images, once, on the run's device."""
    return run.clip.embed_image(images).to(run.device)


def draw(run, n: int, generator: torch.Generator) -> tuple[Tensor | None, Tensor | None]:
    """(embedding dropped (n,) bool, caption dropped (n,) bool or None): each with its own
    probability, independently (DALL-E 2 sec. 2.1: 10% and 50%)."""
    g, config = generator, run.config
    embed_drop = torch.rand(n, generator=g, device=g.device).to(run.device) < config.p_uncond
    text_drop = None
    if run.text is not None:
        text_drop = torch.rand(n, generator=g, device=g.device).to(run.device) < config.p_text_drop
    return embed_drop, text_drop


def training_condition(run, idx: Tensor, drop: Tensor | None) -> dict[str, Tensor]:
    """{"image_embed": (B, D)}: the examples' embeddings, zero where dropped."""
    z = run.image_embeds[idx.to(run.image_embeds.device)]
    if drop is not None:
        z = torch.where(drop.to(z.device)[:, None], torch.zeros_like(z), z)
    return {"image_embed": z}


def condition(run, embeddings: Tensor | None) -> dict[str, Tensor]:
    """The network's keyword for given embeddings (N, D): what a decoder run needs and no
    other run takes."""
    decoder = bool(getattr(run.config, "clip", ""))
    if embeddings is None:
        if decoder:
            raise ValueError(f"this is an unCLIP decoder run (clip={run.config.clip}): it samples from CLIP image "
                             f"embeddings; pass embeddings (N, {run.clip.model.config.embed_dim}), e.g. "
                             "run.clip.embed_image(images) or a prior run's generate_embeddings(prompts) "
                             "(hirune.inference.unclip); on the command line `hirune unclip text PRIOR DECODER "
                             "--prompt P` or `hirune unclip variations DECODER`, and `hirune eval DECODER` decodes "
                             "test images' embeddings")
        return {}
    if not decoder:
        raise ValueError("embeddings go with an unCLIP decoder run (clip=RUN); this run is not conditioned on "
                         "CLIP image embeddings")
    d = run.clip.model.config.embed_dim
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or embeddings.shape[1] != d:
        shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings of shape {shape} are not valid; valid: (N, {d}) CLIP image embeddings")
    if not torch.isfinite(embeddings).all():
        raise ValueError("embeddings are not finite")
    return {"image_embed": embeddings.to(run.device, torch.float32)}


def check_count(embeddings: Tensor | None, n: int) -> None:
    if embeddings is not None and len(embeddings) != n:
        raise ValueError(f"n={n} samples for {len(embeddings)} embeddings; give one embedding per sample")


def null_condition(run) -> dict:
    """Classifier-free guidance's null condition of a decoder: the zero embedding (sec. 2.1)."""
    return {"image_embed": 0.0} if getattr(run.config, "clip", "") else {}


def preview_condition(run, n: int) -> dict[str, Tensor]:
    """The embeddings of n training images, the k-th of digit k mod 10 where there are labels
    (so a text decoder's preview captions name the digits drawn)."""
    labels = run.train_data.labels
    if labels is None:
        idx = spread(n, len(run.image_embeds))
    else:
        order = [torch.nonzero(labels == k).flatten() for k in range(10)]
        idx = torch.stack([order[i % 10][(i // 10) % len(order[i % 10])] for i in range(n)])
    return {"image_embed": run.image_embeds[idx.to(run.image_embeds.device)]}


def test_embeddings(run, n: int) -> tuple[Tensor, Tensor | None]:
    """The CLIP image embeddings of n test images spread over the split, and their labels
    (None without): what a decoder's evaluation draws from, each sample a reconstruction of
    one test image through its embedding."""
    from ..data import load_dataset

    test = load_dataset(run.data.name, "test")
    idx = spread(n, len(test.data))
    return run.clip.embed_image(test.data[idx]), None if test.labels is None else test.labels[idx].long()


__all__ = ["attach", "check", "check_clip", "check_count", "condition", "draw", "embed_training_images", "network_config",
           "null_condition", "preview_condition", "test_embeddings", "training_condition"]
