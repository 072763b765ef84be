"""Model families: one object per kind of model, which the training loop, the checkpoints
and the loader call through one interface (`base.Family`) without asking which it is.

    base.py              the interface, `Draw` / `Batch` / `Context`, and the registry
    diffusion.py         DDPM, DDIM, IDDPM, v-prediction, score models and SDEs, flow matching
                         and reflow, on pixels or latents, unconditional, class or text
                         (+ diffusion_sampling.py, diffusion_eval.py; latent.py: the first
                         stage; reflow.py: the teacher's pairs; finetune.py: fine-tuning
                         a trained run, fully or with LoRA adapters)
    normalizing_flow.py  RealNVP, Glow, MAF: exact likelihood
    autoencoder.py       the first stage of latent diffusion (+ adversary.py: its optional
                         patch discriminator)
    classifier.py        noise-aware classifiers for classifier guidance
    clip.py              CLIP: contrastive image-text embeddings, zero-shot classification
    dalle.py             DALL-E's text-to-image transformer over a tokenizer run's image codes
                         (+ dalle_tokens.py: image and text tokenizers; dalle_sampling.py)
    video.py             CogVideoX-style text to video: the expert transformer on a causal
                         video VAE's latents (a diffusion family over clips)
    cogvideo.py          CogVideo: autoregressive frames of image tokens, started from a
                         dalle run, with recursive interpolation (+ cogvideo_sampling.py)

Adding a family is one new module with a registered `Family` subclass, imported here.
"""

from .autoencoder import Autoencoder
from .base import FAMILIES, Batch, Context, Draw, Family, get_family, register
from .classifier import Classifier
from .clip import Clip
from .cogvideo import CogVideo
from .dalle import Dalle
from .diffusion import Diffusion, DiffusionConfig
from .normalizing_flow import NormalizingFlow
from .prior import Prior
from .video import Video

__all__ = ["FAMILIES", "Autoencoder", "Batch", "Classifier", "Clip", "CogVideo", "Context", "Dalle", "Diffusion",
           "DiffusionConfig", "Draw", "Family", "NormalizingFlow", "Video", "get_family", "register"]
