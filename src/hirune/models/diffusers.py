"""A diffusers denoising network as a hirune model kind: `build_model("diffusers", class_name=..., config=...)`.

The config is the diffusers class and its constructor arguments (the folder's config.json,
its private `_` keys left out); the module builds the class with `from_config` and holds it
as `.net`, so its weights are `net.<diffusers name>` and a run directory keeps them in an
ordinary hirune checkpoint (`hirune import DIR` writes one; `training.diffusers_import`).
diffusers is imported only when such a network is built.

hirune's `Denoiser` calls its network with t: (B,) float32 in the process's units, for a
discrete process the integer step 0..T-1, the same numbers diffusers' schedulers pass as
`timestep`; a hirune network multiplies by its `time_scale` (1000 / T) inside, a diffusers
network embeds t as given.  So t passes through unchanged and every hirune sampler,
inversion and likelihood runs on a diffusers network:

    UNet2DModel             net(x, t, class_labels=y).sample   (y: labels 0..num_class_embeds - 1)
    DiTTransformer2DModel   net(x, t, class_labels=y).sample   (y None: the null label, num_embeds_ada_norm)

The output layout is already hirune's: (prediction) or, for learned variance, (prediction |
v) on dim 1.  Labels follow hirune's convention (y: (B,) int64, `num_classes` the null
label, y=None all-null) where diffusers has a null label: DiT's table has num_classes + 1
rows, UNet2DModel's class embedding num_class_embeds rows and no null label, so a
class-conditional UNet2DModel needs real labels (no classifier-free guidance).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .config import check_fields

NETWORK_CLASSES = ("UNet2DModel", "DiTTransformer2DModel")


@dataclass(frozen=True)
class DiffusersConfig:
    class_name: str = "UNet2DModel"   # one of NETWORK_CLASSES
    config: dict = field(default_factory=dict)   # its constructor arguments (diffusers' config.json)

    def __post_init__(self):
        check_fields(self)
        if self.class_name not in NETWORK_CLASSES:
            raise ValueError(f"DiffusersConfig.class_name {self.class_name!r}; valid: {list(NETWORK_CLASSES)}")
        if self.class_name == "UNet2DModel" and self.config.get("class_embed_type") is not None:
            raise ValueError(f"UNet2DModel class_embed_type={self.config['class_embed_type']!r} (labels embedded as "
                             "numbers) is not a class label table; valid: None with num_class_embeds (or neither)")

    @property
    def num_classes(self) -> int:
        """The number of classes (0: unconditional)."""
        key = "num_class_embeds" if self.class_name == "UNet2DModel" else "num_embeds_ada_norm"
        return int(self.config.get(key) or 0)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the network's input."""
        size = self.config.get("sample_size")
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.config.get("in_channels", 3)), int(h), int(w)


def public_config(config) -> dict:
    """A diffusers config (`net.config`, a FrozenDict) as plain JSON data without its `_` keys."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if not k.startswith("_")}


class DiffusersNetwork(nn.Module):
    """model(x, t, y=None) -> net(x, t, class_labels=...).sample for the diffusers network
    `config` describes (built with its initial weights; a checkpoint fills them).
    x: (B, C, H, W), t: (B,) steps 0..T-1 (float), y: (B,) int64 or None."""

    def __init__(self, config: DiffusersConfig):
        super().__init__()
        try:
            import diffusers
        except ImportError:
            raise ImportError(f"this network is a diffusers {config.class_name} (a run `hirune import` wrote): "
                              "install diffusers (pip install diffusers)") from None
        self.config = config
        self.net = getattr(diffusers, config.class_name).from_config(config.config)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        k, kind = self.num_classes, self.config.class_name
        if y is not None and not k:
            raise ValueError(f"class labels given to an unconditional diffusers {kind}")
        if kind == "DiTTransformer2DModel" and y is None:  # diffusers' DiT always takes a label: the null one
            y = torch.full(t.shape, k, dtype=torch.long, device=x.device)
        elif kind == "UNet2DModel" and k and (y is None or bool((y >= k).any())):
            raise ValueError(f"this UNet2DModel embeds labels 0..{k - 1} and has no null label: give every sample "
                             "a class (--class); classifier-free guidance needs a null label it does not have")
        return self.net(x, t, class_labels=y).sample
