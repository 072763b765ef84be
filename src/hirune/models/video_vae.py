"""CogVideoX's 3D causal VAE: a KL autoencoder of videos that compresses time 4x and space
4x or 8x (Yang et al. 2024, "CogVideoX: Text-to-Video Diffusion Models with An Expert
Transformer", sec. 2.1 "3D Causal VAE" and fig. 3; diffusers' `AutoencoderKLCogVideoX`).

    video x (B, C, T, H, W), T = 4k + 1 -> Encoder -> mean, log-variance (B, z, k + 1, H / f, W / f)
    latent (B, z, k + 1, h, w) -> Decoder -> x_hat (B, C, 4k + 1, f h, f w)

Temporal causality.  Every convolution that mixes frames is a `CausalConv3d`: its kt - 1
frames of time padding all go in the past (copies of the first frame, as CogVideoX pads),
so output frame t sees input frames t - kt + 1 .. t and never a later one (paper sec. 2.1:
"temporally causal convolution ... puts all the paddings at the beginning").  Time is
compressed by `pool_time` in the encoder's first log2(time_compression) downsampling
levels: the first frame alone, the others averaged in pairs, 1 + 2m -> 1 + m frames
(CogVideoXDownsample3D with compress_time); the decoder undoes it with `repeat_time`,
1 + m -> 1 + 2m (CogVideoXUpsample3D), in its first log2(time_compression) upsampling
levels as CogVideoX does (with 4x time over 4x space the two coincide with a mirror image
of the encoder).  So 4k + 1 frames give k + 1 latent frames; latent frame j summarises
frames 4j - 3 .. 4j and sees frames 0 .. 4j; the first frame is encoded alone, and an image
is a one-frame video (the model trains jointly on both).

Normalisation and attention per frame.  CogVideoX's GroupNorm takes its statistics over
(C / G, T, H, W) of the whole clip, so every normalised frame depends on the frames after
it: the network is causal in its convolutions but not as a function (it leaks the future,
and a clip's first latent differs from that of its first frame alone).  Here GroupNorm
takes each frame's own statistics over (C / G, H, W) (`FrameGroupNorm`) and the optional
middle self-attention attends within a frame (`FrameAttention`), so the model is exactly
causal: changing frame k leaves bit for bit every latent and decoded frame that does not
cover it, and encode(x)[:, :, :1] is encode(x[:, :, :1]).  The decoder's conditioning of its
norms on the latent (CogVideoX's SpatialNorm3D) is left out: the plain norm of LDM's decoder.

Interface: that of the image KL autoencoder (`models/autoencoder.py`), whose
`DiagonalGaussian` posterior it returns: `encode(x) -> DiagonalGaussian`, `decode(z)`,
`forward(x, noise=None, sample=True) -> AutoencoderOutput`, `latent_shape`, `last_layer`.
An image batch (B, C, H, W) is accepted as a batch of one-frame videos: it is encoded as
(B, C, 1, H, W) and the time axis is dropped again, so images go in and come out (latents
(B, z, h, w)), and 4-D latents decode to images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import SelfAttention2d, norm_groups
from .autoencoder import AutoencoderOutput, DiagonalGaussian, Downsample, KLAutoencoderConfig, mid_blocks
from .unet import Upsample


# --- the layers ------------------------------------------------------------------------

def per_frame(module: nn.Module, x: Tensor) -> Tensor:
    """Apply a module of images to each frame: (B, C, T, H, W) -> (B, C', T, H', W')."""
    B, C, T, H, W = x.shape
    y = module(x.transpose(1, 2).reshape(B * T, C, H, W))
    return y.reshape(B, T, *y.shape[1:]).transpose(1, 2)


class CausalConv3d(nn.Module):
    """A 3-D convolution of kernel (kt, kh, kw) that is causal in time (CogVideoX sec. 2.1).

    Time: kt - 1 copies of the first frame are put before it, so output frame t is a function
    of input frames max(0, t - kt + 1) .. t alone (CogVideoXCausalConv3d's padding).  Space:
    (kh - 1) / 2 and (kw - 1) / 2 zeros each side, as a 2-D conv with padding k // 2.  On a
    one-frame input every time tap sees the same frame, so the layer is the 2-D conv whose
    kernel is the 3-D kernel summed over time.  x: (B, in_channels, T, H, W) -> (B, out, T, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        if kh % 2 == 0 or kw % 2 == 0 or kt < 1:
            raise ValueError(f"kernel_size={kernel_size} is not valid; valid: (kt, kh, kw) with kt >= 1 and kh, kw "
                             "odd (the spatial padding is symmetric)")
        self.time_pad = kt - 1
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw), padding=(0, kh // 2, kw // 2))
        self.inflate_()

    @torch.no_grad()
    def inflate_(self) -> None:
        """Start as a 2-D conv on the current frame: the kernel summed over time into its
        last tap (the current frame), the past taps zero -- the inflation of 2-D kernels
        into 3-D ones (Carreira & Zisserman 2017, I3D), put on the causal tap.  hirune's
        default: with PyTorch's init every tap starts equal, each output mixes the digit at
        three places of its path, and on moving digits the autoencoder sat at the
        all-background reconstruction (L1 0.095 after 300 steps overfitting 8 clips, against
        0.043 with this start at time compression 1).  On one frame it changes nothing (the
        taps see the same frame and are summed)."""
        w = self.conv.weight
        w[:, :, -1] = w.sum(2)
        w[:, :, :-1] = 0

    def forward(self, x: Tensor) -> Tensor:
        if self.time_pad:
            x = torch.cat([x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1), x], dim=2)
        return self.conv(x)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with each frame's own statistics, over (C / G, H, W): (B, C, T, H, W).
    CogVideoX's GroupNorm spans (C / G, T, H, W), which lets every frame see the later ones;
    per-frame statistics keep the network causal (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        return per_frame(super().forward, x)


def _norm(channels: int) -> FrameGroupNorm:
    return FrameGroupNorm(norm_groups(channels), channels, eps=1e-6)  # LDM's and CogVideoX's eps


class FrameAttention(SelfAttention2d):
    """Self-attention over the H W positions of each frame, frames apart: (B, C, T, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        return per_frame(super().forward, x)


class ResnetBlock3d(nn.Module):
    """x + conv(dropout(SiLU(GN(conv(SiLU(GN(x))))))), causal 3x3x3 convs and per-frame
    GroupNorms, with a 1x1x1 conv on x when the channel count changes (CogVideoXResnetBlock3D
    without the time embedding)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(in_channels), CausalConv3d(in_channels, out_channels, 3)
        self.norm2, self.conv2 = _norm(out_channels), CausalConv3d(out_channels, out_channels, 3)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def pool_time(x: Tensor) -> Tensor:
    """Halve time causally: the first frame alone, the others averaged in pairs (1, 2), (3, 4), ...:
    (B, C, 1 + 2m, H, W) -> (B, C, 1 + m, H, W) (CogVideoXDownsample3D with compress_time)."""
    if x.shape[2] % 2 != 1:
        raise ValueError(f"frames={x.shape[2]} is not valid for pool_time; valid: 1 + 2m (odd)")
    first, rest = x[:, :, :1], x[:, :, 1:]
    B, C, T, H, W = rest.shape
    return torch.cat([first, rest.reshape(B, C, T // 2, 2, H, W).mean(3)], dim=2)


def repeat_time(x: Tensor) -> Tensor:
    """Double time causally: the first frame alone, the others repeated twice:
    (B, C, 1 + m, H, W) -> (B, C, 1 + 2m, H, W), the inverse of `pool_time` on clips constant
    over each pair (CogVideoXUpsample3D with compress_time, for an odd count)."""
    return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)


class Downsample3d(Downsample):
    """`pool_time` where compress_time, then in each frame the image autoencoder's
    downsampling: one pixel of zeros right and bottom, a 3x3 conv of stride 2
    (CogVideoXDownsample3D)."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__(channels)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        if self.compress_time:
            x = pool_time(x)
        return per_frame(super().forward, x)


class Upsample3d(Upsample):
    """`repeat_time` where compress_time, then in each frame the image autoencoder's
    upsampling: nearest-neighbour 2x and a 3x3 conv (CogVideoXUpsample3D)."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__(channels)
        self.compress_time = compress_time

    def forward(self, x: Tensor) -> Tensor:
        if self.compress_time:
            x = repeat_time(x)
        return per_frame(super().forward, x)


# --- the config ------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoKLConfig(KLAutoencoderConfig):
    """The image KL autoencoder's settings (`KLAutoencoderConfig`: channels, channel_mult,
    num_res_blocks, z_channels, kl_weight, reconstruction, ...) with the defaults of the tiny
    size, plus time_compression: 1, 2, 4, ... (2 per compressing level, at most one per
    downsampling level; CogVideoX: 4); frames: when given, checked to be 1 mod
    time_compression at construction.  mid_attention adds per-frame self-attention to the
    middle blocks (CogVideoX has none).  The perceptual and adversarial losses are 2-D and
    refused (perceptual_weight and disc_weight must be 0)."""

    channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    mid_attention: bool = False
    time_compression: int = 4
    frames: int | None = None

    def __post_init__(self):
        super().__post_init__()
        levels = len(self.channel_mult) - 1
        valid = [2**i for i in range(levels + 1)]
        if self.time_compression not in valid:
            raise ValueError(f"VideoKLConfig.time_compression={self.time_compression} is not valid; valid: {valid} "
                             f"(one halving per downsampling level: {levels} with channel_mult of length "
                             f"{len(self.channel_mult)})")
        if self.frames is not None:
            check_frames(self.frames, self.time_compression)
        for key in ("perceptual_weight", "disc_weight"):
            if getattr(self, key):
                raise ValueError(f"VideoKLConfig.{key}={getattr(self, key)} is not valid; valid: 0 (the "
                                 "evaluator's features and the patch discriminator are 2-D)")

    @property
    def time_levels(self) -> int:
        return int(math.log2(self.time_compression))


def check_frames(frames: int, time_compression: int) -> None:
    """ValueError unless `frames` is 1 mod time_compression (4k + 1 for 4x)."""
    if frames < 1 or (frames - 1) % time_compression:
        valid = [time_compression * k + 1 for k in range(4)]
        raise ValueError(f"frames={frames} is not valid; valid: {time_compression}k + 1 frames for "
                         f"time_compression={time_compression}, e.g. {valid}")


def check_side(key: str, size: int, factor: int) -> None:
    """ValueError unless an image side is a multiple of the spatial factor f."""
    if size % factor:
        lower = size - size % factor
        valid = [v for v in (lower, lower + factor) if v > 0]
        raise ValueError(f"{key}={size} is not valid; valid: multiples of the spatial factor f={factor}, "
                         f"e.g. {valid}")


# Named sizes.  "tiny" (the default) fits 2 CPU cores: 32 x 32 x 9 -> 8 x 8 x 3; "f8" adds a
# level (8x in space: 32 x 32 -> 4 x 4); "cogvideox" is CogVideoX-2B/5B's VAE layout
# (AutoencoderKLCogVideoX: 128, 256, 256, 512 channels, 3 ResNet blocks, z = 16) without
# its decoder's spatial norms.
VIDEO_KL_SIZES: dict[str, dict] = {
    "tiny": dict(channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, z_channels=4),
    "f8": dict(channels=16, channel_mult=(1, 2, 2, 4), num_res_blocks=1, z_channels=4),
    "cogvideox": dict(channels=128, channel_mult=(1, 2, 2, 4), num_res_blocks=3, z_channels=16),
}


# --- encoder, decoder, the autoencoder -------------------------------------------------

class VideoEncoder(nn.Module):
    """x (B, in_channels, T, H, W) -> (B, 2 z, 1 + (T - 1) / time_compression, H / f, W / f):
    a causal conv, per level `num_res_blocks` ResnetBlock3d and a Downsample3d (all levels
    but the last; the first time_levels of them also halve time), the middle blocks, then
    GroupNorm, SiLU and a causal conv to the posterior's mean and log-variance."""

    def __init__(self, c: VideoKLConfig):
        super().__init__()
        ch = c.channels
        self.conv_in = CausalConv3d(c.in_channels, ch, 3)
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            layers = []
            for _ in range(c.num_res_blocks):
                layers.append(ResnetBlock3d(ch, c.channels * mult, c.dropout))
                ch = c.channels * mult
            if level < len(c.channel_mult) - 1:
                layers.append(Downsample3d(ch, compress_time=level < c.time_levels))
            self.down.append(nn.Sequential(*layers))
        self.mid = mid_blocks(ch, c, ResnetBlock3d, FrameAttention)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), CausalConv3d(ch, 2 * c.z_channels, 3))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.out(self.mid(h))


class VideoDecoder(nn.Module):
    """z (B, z, 1 + m, h, w) -> (B, out_channels, 1 + m time_compression, f h, f w): the
    encoder's layers in reverse with `num_res_blocks + 1` blocks per level and Upsample3d,
    the first time_levels upsamplings doubling time (as CogVideoX's decoder)."""

    def __init__(self, c: VideoKLConfig):
        super().__init__()
        ch = c.channels * c.channel_mult[-1]
        self.conv_in = CausalConv3d(c.z_channels, ch, 3)
        self.mid = mid_blocks(ch, c, ResnetBlock3d, FrameAttention)
        self.up = nn.ModuleList()
        for i, (level, mult) in enumerate(reversed(list(enumerate(c.channel_mult)))):
            layers = []
            for _ in range(c.num_res_blocks + 1):
                layers.append(ResnetBlock3d(ch, c.channels * mult, c.dropout))
                ch = c.channels * mult
            if level > 0:
                layers.append(Upsample3d(ch, compress_time=i < c.time_levels))
            self.up.append(nn.Sequential(*layers))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), CausalConv3d(ch, c.out_channels or c.in_channels, 3))

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.out(h)


class VideoKLAutoencoder(nn.Module):
    """CogVideoX's 3D causal VAE (see the module docstring).  Like CogVideoX, the encoder's
    last conv gives the posterior's moments directly and the decoder reads the latent
    directly (no 1x1 quant_conv / post_quant_conv)."""

    def __init__(self, config: VideoKLConfig):
        super().__init__()
        self.config = config
        self.encoder = VideoEncoder(config)
        self.decoder = VideoDecoder(config)

    def latent_shape(self, video_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(z, 1 + (T - 1) / time_compression, H / f, W / f) for a video (C, T, H, W);
        (z, H / f, W / f) for an image (C, H, W)."""
        c, f = self.config, self.config.downsample_factor
        space = (video_shape[-2] // f, video_shape[-1] // f)
        if len(video_shape) == 3:
            return (c.z_channels, *space)
        return (c.z_channels, 1 + (video_shape[1] - 1) // c.time_compression, *space)

    def check_input(self, x: Tensor) -> None:
        """ValueError unless x is (B, C, T, H, W) with T = 1 mod time_compression and H, W
        multiples of f, or an image batch (B, C, H, W)."""
        if x.dim() not in (4, 5) or x.shape[1] != self.config.in_channels:
            raise ValueError(f"input shape={tuple(x.shape)} is not valid; valid: (B, {self.config.in_channels}, T, H, "
                             f"W) videos or (B, {self.config.in_channels}, H, W) images")
        if x.dim() == 5:
            check_frames(x.shape[2], self.config.time_compression)
        for key, size in zip(("height", "width"), x.shape[-2:]):
            check_side(key, size, self.config.downsample_factor)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """x (B, C, T, H, W) -> q(z | x) over (B, z, 1 + (T - 1) / time_compression, H / f, W / f);
        images (B, C, H, W) -> q over (B, z, H / f, W / f)."""
        self.check_input(x)
        image = x.dim() == 4
        moments = self.encoder(x.unsqueeze(2) if image else x)
        mean, logvar = (moments.squeeze(2) if image else moments).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, z, 1 + m, h, w) -> x_hat (B, C, 1 + m time_compression, f h, f w); 4-D latents
        (B, z, h, w) -> images (B, C, f h, f w)."""
        if z.dim() not in (4, 5) or z.shape[1] != self.config.z_channels:
            raise ValueError(f"latent shape={tuple(z.shape)} is not valid; valid: (B, {self.config.z_channels}, "
                             f"T, h, w) or (B, {self.config.z_channels}, h, w)")
        if z.dim() == 4:
            return self.decoder(z.unsqueeze(2)).squeeze(2)
        return self.decoder(z)

    def forward(self, x: Tensor, noise: Tensor | None = None, sample: bool = True) -> AutoencoderOutput:
        """Reconstruct x through a posterior sample (mean + std * noise) or, with
        sample=False, its mean."""
        posterior = self.encode(x)
        z = posterior.sample(noise) if sample else posterior.mode()
        return AutoencoderOutput(self.decode(z), z, posterior, None)

    def last_layer(self) -> nn.Parameter:
        """The weight of the decoder's output conv."""
        return self.decoder.out[-1].conv.weight
