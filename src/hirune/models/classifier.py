"""A noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

ADM's classifier is the encoder half of its UNet with a pooled linear head: the same
ResBlocks with time conditioning (no class embedding: the class is what it predicts),
attention at the chosen downsample factors, stride-2 downsampling between levels, a
middle ResBlock-attention-ResBlock, then GroupNorm, SiLU, global average pooling and a
linear layer to the logits.  Called `classifier(x_t, t) -> (B, num_classes)` with t as
the denoiser's network receives it (float32 (B,), process units, times `time_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import SelfAttention2d, group_norm, timestep_embedding
from .config import check_fields
from .unet import Downsample, ResBlock, Step


@dataclass(frozen=True)
class ClassifierConfig:
    """in_channels, num_classes; channels * channel_mult[i] at level i; num_res_blocks per
    level; attention at the downsample factors in attention_resolutions (1 = input size);
    head_channels per attention head; use_scale_shift_norm: FiLM time conditioning;
    time_scale: as for the UNet (1 for discrete schedules, 1000 for t in [0, 1])."""

    in_channels: int = 1
    num_classes: int = 10
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (4,)
    head_channels: int = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    time_scale: float = 1.0

    def __post_init__(self):
        check_fields(self)
        for name in ("in_channels", "num_classes", "channels", "head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClassifierConfig.{name} must be positive, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ValueError(f"ClassifierConfig.channel_mult must be non-empty and positive, got {self.channel_mult}")
        factors = tuple(2 ** i for i in range(len(self.channel_mult)))
        if not set(self.attention_resolutions) <= set(factors):
            raise ValueError(f"ClassifierConfig.attention_resolutions {self.attention_resolutions} are not "
                             f"downsample factors of these levels; valid: {factors}")


class NoisyClassifier(nn.Module):
    """classifier(x_t, t) -> logits (B, num_classes).  See the module docstring."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        emb_ch = 4 * c.channels
        self.time_embed = nn.Sequential(nn.Linear(c.channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_ch, c.dropout, c.use_scale_shift_norm)

        ch, factor = c.channels, 1
        self.input_conv = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers = [res(ch, c.channels * mult)]
                ch = c.channels * mult
                if factor in c.attention_resolutions:
                    layers.append(SelfAttention2d(ch, max(1, ch // c.head_channels)))
                self.down.append(Step(*layers))
            if level < len(c.channel_mult) - 1:
                self.down.append(Step(Downsample(ch)))
                factor *= 2
        self.middle = Step(res(ch, ch), SelfAttention2d(ch, max(1, ch // c.head_channels)), res(ch, ch))
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(ch, c.num_classes))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        freqs = timestep_embedding(t * self.config.time_scale, self.config.channels)
        emb = F.silu(self.time_embed(freqs.to(self.input_conv.weight.dtype)))
        h = self.input_conv(x)
        for step in self.down:
            h = step(h, emb)
        return self.head(self.middle(h, emb))
