"""A diffusers denoising network behind hirune's network protocol `model(x, t, y=None)`.

hirune's `Denoiser` calls its network with t: (B,) float32 in the process's units, for a
discrete process the integer step 0..T-1, the same numbers diffusers' schedulers pass as
`timestep`; a hirune network then multiplies by its `time_scale` (1000 / T) inside, a
diffusers network embeds t as given.  So the wrapper passes t through unchanged and every
hirune sampler, inversion and likelihood that takes a denoiser runs on a diffusers network:

    UNet2DModel             net(x, t, class_labels=y).sample   (y only where num_class_embeds is set)
    DiTTransformer2DModel   net(x, t, class_labels=y).sample   (y None: the null label, num_embeds_ada_norm)

The output layout is already hirune's: (prediction) or, for learned variance, (prediction |
v) on dim 1.  This module lives in training/ because a model kind the light loader builds
from a config (`models.build_model`) would belong in models/ (the next step: then `hirune sample`
reads imported runs too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NETWORK_CLASSES = ("UNet2DModel", "DiTTransformer2DModel")


class DiffusersNetwork(nn.Module):
    """model(x, t, y=None) -> net(x, t, class_labels=...).sample for a diffusers `net` of one of
    NETWORK_CLASSES.  x: (B, C, H, W), t: (B,) steps 0..T-1 (float), y: (B,) int64 or None."""

    def __init__(self, net: nn.Module):
        super().__init__()
        kind = type(net).__name__
        if kind not in NETWORK_CLASSES:
            raise ValueError(f"cannot wrap a diffusers {kind}; valid: {list(NETWORK_CLASSES)}")
        self.net, self.kind = net, kind

    @property
    def num_classes(self) -> int | None:
        c = self.net.config
        return c.num_class_embeds if self.kind == "UNet2DModel" else c.num_embeds_ada_norm

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if self.kind == "DiTTransformer2DModel" and y is None:  # diffusers' DiT always takes a label
            y = torch.full(t.shape, self.num_classes, dtype=torch.long, device=x.device)
        elif y is not None and not self.num_classes:
            raise ValueError(f"class labels given to an unconditional diffusers {self.kind}")
        return self.net(x, t, class_labels=y).sample
