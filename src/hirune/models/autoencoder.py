"""Autoencoders for latent diffusion: LDM's KL autoencoder and VQGAN's VQ autoencoder
(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
sec. 3.1 and appendix G; Esser et al. 2021, "Taming Transformers").

    x (B, C, H, W) -> Encoder -> 1x1 quant_conv -> latent (B, z_channels, H / f, W / f)
      KL: the conv gives mean and log-variance of a diagonal Gaussian posterior q(z | x)
      VQ: the conv gives z_e, replaced by its nearest codebook vector (`quantize.py`)
    latent -> 1x1 post_quant_conv -> Decoder -> x_hat (B, C, H, W)

Encoder: conv_in, then per level `num_res_blocks` ResnetBlocks and a stride-2
downsample (all levels but the last), then a middle ResnetBlock, self-attention,
ResnetBlock, and GroupNorm, SiLU, conv_out.  The decoder mirrors it with
`num_res_blocks + 1` ResnetBlocks per level and nearest-neighbour upsampling.  The
downsampling factor is f = 2^(len(channel_mult) - 1); H and W must be multiples of f.
The layout, paddings and GroupNorm eps (1e-6) are LDM's (`ldm/modules/diffusionmodules/
model.py`) and therefore diffusers' `AutoencoderKL`, whose SD VAE is size "f8" below.

Interface: `encode(x)` (KL: the posterior `DiagonalGaussian`; VQ: the quantised latent),
`decode(z) -> x_hat`, and `forward(x, noise=None) -> AutoencoderOutput` for training.
The weights of the training loss (`hirune.autoencoding`) are part of the config, as LDM
keeps its `lossconfig` with the model, so a checkpoint says how it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import Conv1x1, SelfAttention2d, norm_groups
from .config import check_fields
from .discriminator import check_layers
from .quantize import CODEBOOK_INITS, CODEBOOK_UPDATES, Quantized, VectorQuantizer
from .unet import Upsample

RECONSTRUCTION_LOSSES = ("l1", "l2")
DISC_LOSSES = ("hinge", "vanilla")


def check_divisible(size: int, factor: int, levels: int) -> None:
    """ValueError unless an image side `size` is a multiple of the downsampling factor."""
    if size % factor:
        valid = [2**i for i in range(size.bit_length()) if size % 2**i == 0]
        raise ValueError(f"image size {size} is not divisible by the autoencoder's downsampling factor "
                         f"f={factor} ({levels} levels in channel_mult); valid factors for {size}: {valid} "
                         f"(channel_mult of length {[v.bit_length() for v in valid]})")


@dataclass(frozen=True)
class AutoencoderConfig:
    """in_channels / out_channels (default in_channels) of the images; level i has
    channels * channel_mult[i] channels and `num_res_blocks` ResnetBlocks (decoder: + 1);
    z_channels: latent channels; mid_attention: self-attention in the middle blocks;
    image_size: when given, checked against the factor f at construction.
    Training loss (`hirune.autoencoding`): reconstruction "l1" (LDM) or "l2";
    perceptual_weight: the evaluator-feature distance (0: off).
    Adversarial loss (VQGAN eq. 7; off while disc_weight = 0): disc_weight scales the
    adaptive weight of the generator's term; it and the discriminator's own step act from
    optimizer step disc_start on (taming's disc_factor is 0 before); disc_loss "hinge"
    (taming's default) or "vanilla" (the non-saturating BCE form); the patch
    discriminator (`models/discriminator.py`) has disc_channels at its first conv and
    disc_layers stride-2 convs (taming's ndf and n_layers)."""

    in_channels: int = 3
    out_channels: int | None = None
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    mid_attention: bool = True
    dropout: float = 0.0
    image_size: int | None = None
    reconstruction: str = "l1"
    perceptual_weight: float = 0.0
    disc_weight: float = 0.0
    disc_start: int = 0
    disc_loss: str = "hinge"
    disc_channels: int = 32
    disc_layers: int = 1

    def __post_init__(self):
        check_fields(self)
        name = type(self).__name__
        for key in ("in_channels", "out_channels", "channels", "num_res_blocks", "z_channels", "image_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{name}.{key} must be positive, got {value}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"{name}.channel_mult must be non-empty and positive, got {self.channel_mult}")
        if self.reconstruction not in RECONSTRUCTION_LOSSES:
            raise ValueError(f"{name}.reconstruction={self.reconstruction!r}; valid: {list(RECONSTRUCTION_LOSSES)}")
        if not 0.0 <= self.dropout < 1.0 or self.perceptual_weight < 0:
            raise ValueError(f"{name}: dropout must be in [0, 1) and perceptual_weight >= 0")
        if self.image_size is not None:
            check_divisible(self.image_size, self.downsample_factor, len(self.channel_mult))
        self._check_discriminator()

    def _check_discriminator(self) -> None:
        name = type(self).__name__
        if self.disc_weight < 0 or self.disc_start < 0:
            raise ValueError(f"{name}: disc_weight and disc_start must be >= 0 (disc_weight 0: no adversarial "
                             f"loss); got {self.disc_weight}, {self.disc_start}")
        if self.disc_loss not in DISC_LOSSES:
            raise ValueError(f"{name}.disc_loss={self.disc_loss!r}; valid: {list(DISC_LOSSES)}")
        if self.disc_channels < 1 or self.disc_layers < 1:
            raise ValueError(f"{name}: disc_channels and disc_layers must be >= 1; "
                             f"got {self.disc_channels}, {self.disc_layers}")
        if self.disc_weight and self.image_size is not None:
            check_layers(self.image_size, self.disc_layers)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass(frozen=True)
class KLAutoencoderConfig(AutoencoderConfig):
    """kl_weight: LDM's weight of KL(q(z | x) || N(0, I)) in nats per image against the
    reconstruction error summed over the image's pixels (see `hirune.autoencoding`)."""

    kl_weight: float = 1e-6

    def __post_init__(self):
        super().__post_init__()
        if self.kl_weight < 0:
            raise ValueError(f"KLAutoencoderConfig.kl_weight must be >= 0, got {self.kl_weight}")


@dataclass(frozen=True)
class VQAutoencoderConfig(AutoencoderConfig):
    """codebook_size K codes of z_channels dimensions; beta: the commitment weight (VQ-VAE
    eq. 3); codebook_update "loss" (codebook loss) or "ema" (moving averages, decay
    codebook_decay); codebook_init "kmeans" (of the first training batch) or "uniform"."""

    z_channels: int = 3
    codebook_size: int = 512
    beta: float = 0.25
    codebook_update: str = "loss"
    codebook_decay: float = 0.99
    codebook_init: str = "kmeans"

    def __post_init__(self):
        super().__post_init__()
        if self.codebook_size < 2 or self.beta < 0 or not 0.0 < self.codebook_decay < 1.0:
            raise ValueError("VQAutoencoderConfig needs codebook_size >= 2, beta >= 0 and codebook_decay in (0, 1); "
                             f"got {self.codebook_size}, {self.beta}, {self.codebook_decay}")
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"VQAutoencoderConfig.codebook_update={self.codebook_update!r}; "
                             f"valid: {list(CODEBOOK_UPDATES)}")
        if self.codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"VQAutoencoderConfig.codebook_init={self.codebook_init!r}; "
                             f"valid: {list(CODEBOOK_INITS)}")


# Named sizes, by downsampling factor as in LDM's model zoo (KL-f4, KL-f8, VQ-f4, ...).
AUTOENCODER_SIZES: dict[str, dict] = {
    # the 8 x 8 digits -> 4 x 4 latents
    "f2": dict(channels=32, channel_mult=(1, 2), num_res_blocks=1),
    # 28 x 28 MNIST -> 7 x 7 latents
    "f4": dict(channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
    # LDM's KL-f8 = Stable Diffusion's VAE (83,653,863 parameters at 3 channels, z = 4)
    "f8": dict(channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2),
}


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(norm_groups(channels), channels, eps=1e-6)  # LDM's Normalize


class ResnetBlock(nn.Module):
    """x + conv(dropout(SiLU(GN(conv(SiLU(GN(x))))))), with a 1x1 conv on x when the
    channel count changes (LDM's ResnetBlock without the time embedding)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_channels), nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = _norm(out_channels), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Identity() if in_channels == out_channels else Conv1x1(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Pad one pixel on the right and bottom, then a 3x3 conv with stride 2: n -> n / 2
    (LDM's asymmetric padding)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


def mid_blocks(ch: int, c: AutoencoderConfig, block: type[nn.Module] = ResnetBlock,
               attention: type[nn.Module] = SelfAttention2d) -> nn.Sequential:
    """The middle: a ResNet block, optional self-attention, a ResNet block (`block` and
    `attention` their classes: the video VAE passes its per-frame ones)."""
    layers = [block(ch, ch, c.dropout)]
    if c.mid_attention:
        layers.append(attention(ch, 1))
        layers[-1].norm.eps = 1e-6
    return nn.Sequential(*layers, block(ch, ch, c.dropout))


class Encoder(nn.Module):
    """x (B, in_channels, H, W) -> (B, out_channels, H / f, W / f)."""

    def __init__(self, c: AutoencoderConfig, out_channels: int):
        super().__init__()
        ch = c.channels
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            layers = []
            for _ in range(c.num_res_blocks):
                layers.append(ResnetBlock(ch, c.channels * mult, c.dropout))
                ch = c.channels * mult
            if level < len(c.channel_mult) - 1:
                layers.append(Downsample(ch))
            self.down.append(nn.Sequential(*layers))
        self.mid = mid_blocks(ch, c)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.out(self.mid(h))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> (B, out_channels, f h, f w)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        ch = c.channels * c.channel_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, ch, 3, padding=1)
        self.mid = mid_blocks(ch, c)
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            layers = []
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResnetBlock(ch, c.channels * mult, c.dropout))
                ch = c.channels * mult
            if level > 0:
                layers.append(Upsample(ch))
            self.up.append(nn.Sequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(),
                                 nn.Conv2d(ch, c.out_channels or c.in_channels, 3, padding=1))

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.out(h)


class DiagonalGaussian:
    """The posterior q(z | x) = N(mean, diag(exp(logvar))), logvar clamped to [-30, 20]
    as in LDM.  mean, logvar: (B, z, h, w)."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)
        self.std, self.var = torch.exp(0.5 * self.logvar), torch.exp(self.logvar)

    def sample(self, noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """mean + std * noise (reparameterised); noise ~ N(0, I) drawn when not given."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                                device=self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) = 1/2 sum(mean^2 + var - 1 - logvar) over (z, h, w): (B,) nats
        (Kingma & Welling 2014, appendix B)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).flatten(1).sum(1)


@dataclass
class AutoencoderOutput:
    reconstruction: Tensor                # (B, C, H, W) x_hat
    latent: Tensor                        # (B, z, h, w) what the decoder saw
    posterior: DiagonalGaussian | None    # KL autoencoders
    quantized: Quantized | None           # VQ autoencoders


class _Autoencoder(nn.Module):
    """What both kinds share: the decoder side and the shape bookkeeping."""

    def __init__(self, config: AutoencoderConfig, encoder_channels: int):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c, encoder_channels)
        self.quant_conv = nn.Conv2d(encoder_channels, encoder_channels, 1)
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 1)
        self.decoder = Decoder(c)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(z_channels, H / f, W / f) for images (C, H, W)."""
        f = self.config.downsample_factor
        return self.config.z_channels, image_shape[-2] // f, image_shape[-1] // f

    def _encoder_moments(self, x: Tensor) -> Tensor:
        for size in x.shape[-2:]:
            check_divisible(size, self.config.downsample_factor, len(self.config.channel_mult))
        return self.quant_conv(self.encoder(x))

    def decode(self, z: Tensor) -> Tensor:
        """z (B, z_channels, h, w) -> x_hat (B, C, f h, f w)."""
        return self.decoder(self.post_quant_conv(z))

    def last_layer(self) -> nn.Parameter:
        """The weight of the decoder's output conv: G_L of VQGAN's adaptive weight (eq. 7)."""
        return self.decoder.out[-1].weight


class KLAutoencoder(_Autoencoder):
    """LDM's KL-regularised autoencoder (a VAE with a small KL weight)."""

    def __init__(self, config: KLAutoencoderConfig):
        super().__init__(config, 2 * config.z_channels)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        mean, logvar = self._encoder_moments(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def forward(self, x: Tensor, noise: Tensor | None = None, sample: bool = True) -> AutoencoderOutput:
        """Reconstruct x through a posterior sample (mean + std * noise) or, with
        sample=False, its mean."""
        posterior = self.encode(x)
        z = posterior.sample(noise) if sample else posterior.mode()
        return AutoencoderOutput(self.decode(z), z, posterior, None)


class VQAutoencoder(_Autoencoder):
    """VQGAN's vector-quantised autoencoder (VQ-VAE with LDM's architecture)."""

    def __init__(self, config: VQAutoencoderConfig):
        super().__init__(config, config.z_channels)
        self.quantizer = VectorQuantizer(config.codebook_size, config.z_channels, config.codebook_update,
                                         config.codebook_decay, init=config.codebook_init)

    def quantize(self, x: Tensor) -> Quantized:
        """The encoder's map, quantised: codes, indices, VQ losses and codebook usage."""
        return self.quantizer(self._encoder_moments(x))

    def encode(self, x: Tensor) -> Tensor:
        """The quantised latent z_q (B, z_channels, h, w)."""
        return self.quantize(x).z_q

    # --- the image-token protocol (DALL-E's transformer reads any network that has it) ---
    @property
    def num_codes(self) -> int:
        """The size K of the codebook: image tokens are 0..K-1."""
        return self.config.codebook_size

    def encode_codes(self, x: Tensor) -> Tensor:
        """Images x (B, C, H, W) -> the index of each position's nearest code (B, h, w), int64."""
        return self.quantize(x).indices

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Code indices (B, h, w) -> images (B, C, f h, f w); ValueError for an index outside 0..K-1."""
        if codes.dtype not in (torch.int32, torch.int64) or codes.dim() != 3:
            raise ValueError(f"codes must be an integer tensor (B, h, w), got {codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(f"code indices must be in 0..{self.num_codes - 1}; got {int(codes.min())}.."
                             f"{int(codes.max())}")
        return self.decode(self.quantizer.lookup(codes.long()))

    def forward(self, x: Tensor, noise: Tensor | None = None, sample: bool = True) -> AutoencoderOutput:
        """Reconstruct x through its quantised latent (noise and sample are unused: VQ is
        deterministic)."""
        q = self.quantize(x)
        return AutoencoderOutput(self.decode(q.z_q), q.z_q, None, q)
