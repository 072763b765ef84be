"""Networks for the denoiser protocol: `model(x, t, y=None)`.

t: (B,) float32 in the process's own time units, multiplied by the config's `time_scale`
before the sinusoidal embedding (1 for discrete schedules, e.g. 1000 for t in [0, 1]).
y: (B,) int64 labels; `num_classes` is the null label, y=None means all-null.

    build_model("unet", size="tiny", in_channels=1, num_classes=10)
    build_model("mlp", dim=2, hidden=128)
    build_model("classifier", in_channels=1, num_classes=10)   # classifier(x_t, t) -> logits
    build_model("dit", size="T/2", in_channels=1, image_size=8)   # transformers: DiT, U-ViT
    build_model("uvit", size="tiny", in_channels=1, image_size=28, patch_size=4)
    build_model("cogvideox", size="tiny", in_channels=4, context_dim=384)   # video latents (B, C, T, H, W)
    build_model("diffusers", class_name="UNet2DModel", config={...})   # a diffusers network (hirune import)
    build_model("kl_autoencoder", size="f4", in_channels=1)   # autoencoders: encode(x), decode(z)
    build_model("vq_autoencoder", size="f2", in_channels=1, codebook_size=128)
    build_model("video_kl", size="tiny", in_channels=1)   # CogVideoX's 3D causal VAE: (B, C, 4k+1, H, W) videos
    build_model("dvae", size="f4", in_channels=1, codebook_size=256)   # tokenizers: encode_codes, decode_codes
    build_model("dalle", text_vocab=64, num_codes=256, image_len=49)   # model(text, codes) -> logits
    build_model("cogvideo", text_vocab=64, image_len=64, frames=9)   # model(text, rate, codes, times) -> logits
    PatchDiscriminator(in_channels=1, channels=32, n_layers=1)   # their optional GAN loss: patch logits
    build_model("clip", image_size=28, vocab_size=40)   # CLIP: (image_emb, text_emb, logit_scale)
    build_model("prior", dim=64, text_width=128)   # unCLIP prior: model(x, t, tokens, mask, text_emb)
    model_config("unet", {"channels": 64, "channel_mult": [1, 2, 2]})   # e.g. from JSON

`dataclasses.asdict(model.config)` gives back a dict `model_config` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .normalizing_flow import Flow, FlowConfig
from .autoencoder import (AUTOENCODER_SIZES, KLAutoencoder, KLAutoencoderConfig, VQAutoencoder,
                          VQAutoencoderConfig)
from .classifier import ClassifierConfig, NoisyClassifier
from .clip import CLIP, CLIPConfig
from .cogvideo import CogVideoConfig, CogVideoTransformer
from .cogvideox import COGVIDEOX_SIZES, CogVideoX, CogVideoXConfig
from .config import config_from_dict
from .dalle import DalleConfig, DalleTransformer
from .discriminator import PatchDiscriminator
from .dvae import DVAE, DVAEConfig
from .diffusers import DiffusersConfig, DiffusersNetwork
from .dit import DIT_SIZES, DiT, DiTConfig
from .mlp import MLP, MLPConfig
from .prior import PriorConfig, PriorTransformer
from .unet import UNET_SIZES, UNet, UNetConfig
from .uvit import UVIT_SIZES, UViT, UViTConfig
from .video_vae import VIDEO_KL_SIZES, VideoKLAutoencoder, VideoKLConfig

MODELS: dict[str, tuple[type[nn.Module], type, dict[str, dict]]] = {
    # kind: (network, config, named sizes)
    "mlp": (MLP, MLPConfig, {}),
    "unet": (UNet, UNetConfig, UNET_SIZES),
    "dit": (DiT, DiTConfig, DIT_SIZES),                     # Peebles & Xie 2023
    "uvit": (UViT, UViTConfig, UVIT_SIZES),                 # Bao et al. 2023
    "cogvideox": (CogVideoX, CogVideoXConfig, COGVIDEOX_SIZES),  # video: Yang et al. 2024 (expert transformer)
    "diffusers": (DiffusersNetwork, DiffusersConfig, {}),   # UNet2DModel / DiT folders read by `hirune import`
    "classifier": (NoisyClassifier, ClassifierConfig, {}),  # p(y | x_t, t) for classifier guidance
    "normalizing_flow": (Flow, FlowConfig, {}),             # RealNVP, Glow, MAF (normalizing_flow.py)
    # autoencoders for latent diffusion, model(x) -> AutoencoderOutput (Rombach et al. 2022)
    "kl_autoencoder": (KLAutoencoder, KLAutoencoderConfig, AUTOENCODER_SIZES),
    "vq_autoencoder": (VQAutoencoder, VQAutoencoderConfig, AUTOENCODER_SIZES),  # VQGAN
    "dvae": (DVAE, DVAEConfig, AUTOENCODER_SIZES),          # DALL-E's discrete VAE (Ramesh et al. 2021)
    "video_kl": (VideoKLAutoencoder, VideoKLConfig, VIDEO_KL_SIZES),  # CogVideoX's 3D causal VAE (Yang et al. 2024)
    "clip": (CLIP, CLIPConfig, {}),                         # image and text towers (Radford et al. 2021)
    # DALL-E's causal transformer over [text tokens | image codes] (Ramesh et al. 2021)
    "dalle": (DalleTransformer, DalleConfig, {}),
    # CogVideo: frames of image codes after [text | frame-rate token], dual-channel attention (Hong et al. 2022)
    "cogvideo": (CogVideoTransformer, CogVideoConfig, {}),
    # unCLIP's diffusion prior over CLIP image embeddings (Ramesh et al. 2022)
    "prior": (PriorTransformer, PriorConfig, {}),
}
AUTOENCODERS = ("kl_autoencoder", "vq_autoencoder", "dvae", "video_kl")


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, the units that FSDP2 shards (and gathers) one at a time
    and that activation recomputation wraps: the elements of the model's top-level
    ModuleLists (UNet steps, MLP blocks, transformer blocks, flow levels) and any other
    top-level module of the same class (the UNet's middle step, U-ViT's mid block)."""
    units: list[nn.Module] = []
    for child in model.children():
        if isinstance(child, nn.ModuleList):
            units.extend(child)
    kinds = {type(u) for u in units}
    units += [c for c in model.children() if type(c) in kinds and c not in units]
    return units


def model_config(kind: str, config: Mapping[str, Any] | None = None, /, **overrides):
    """The config dataclass of `kind` from a dict and/or keywords.  The key `size` starts
    from a named size (`UNET_SIZES`, `DIT_SIZES`, `UVIT_SIZES`, `AUTOENCODER_SIZES`,
    `COGVIDEOX_SIZES`, `VIDEO_KL_SIZES`); the other keys override it."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {sorted(MODELS)}")
    _, config_cls, sizes = MODELS[kind]
    values = {**(config or {}), **overrides}
    size = values.pop("size", None)
    if size is not None:
        if size not in sizes:
            raise ValueError(f"unknown {kind} size {size!r}; valid: {sorted(sizes) or 'none'}")
        values = {**sizes[size], **values}
    return config_from_dict(config_cls, values)


def build_model(kind: str, config: Mapping[str, Any] | None = None, /, **overrides) -> nn.Module:
    """A network by kind ("mlp", "unet", "dit", "uvit", ...) from a config dict and/or keywords (see `model_config`)."""
    config = model_config(kind, config, **overrides)
    return MODELS[kind][0](config)


__all__ = ["AUTOENCODERS", "AUTOENCODER_SIZES", "DIT_SIZES", "MLP", "MODELS", "UNET_SIZES", "UVIT_SIZES",
           "CLIP", "CLIPConfig", "ClassifierConfig", "CogVideoConfig", "CogVideoTransformer", "DVAE", "DVAEConfig",
           "DalleConfig", "DalleTransformer", "DiT", "DiffusersConfig", "DiffusersNetwork", "DiTConfig",
           "KLAutoencoder", "KLAutoencoderConfig", "MLPConfig",
           "NoisyClassifier", "PatchDiscriminator", "PriorConfig", "PriorTransformer", "UNet", "UNetConfig", "UViT", "UViTConfig",
           "VIDEO_KL_SIZES", "VQAutoencoder", "VQAutoencoderConfig", "VideoKLAutoencoder", "VideoKLConfig",
           "build_model", "model_config", "COGVIDEOX_SIZES", "CogVideoX", "CogVideoXConfig"]
