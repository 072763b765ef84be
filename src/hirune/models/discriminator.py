"""The patch discriminator of the optional adversarial loss of LDM / VQGAN autoencoders
(Isola et al. 2017, "pix2pix", sec. 3.2.2; Esser et al. 2021, "Taming Transformers",
sec. 3.1; taming-transformers' `NLayerDiscriminator`).

    x (B, C, S, S) -> conv 4x4 / 2, LeakyReLU(0.2)                      no norm
                   -> (n_layers - 1) x [conv 4x4 / 2, norm, LeakyReLU(0.2)]
                   -> conv 4x4 / 1, norm, LeakyReLU(0.2)
                   -> conv 4x4 / 1 to one channel    -> logits (B, 1, s, s)

`n_layers` counts every stride-2 conv, the first (normless) one included: taming's
n_layers (3 there, the 70 x 70 PatchGAN of pix2pix).  Channels double at each conv after
the first, capped at 8 x `channels`.  Each output logit judges one overlapping patch of
the image, real (> 0) or reconstructed (< 0); the losses average over the patches.

Norm: GroupNorm instead of pix2pix's BatchNorm.  BatchNorm's statistics couple the
examples of a batch (so the discriminator's output would depend on the batch size, on how
a batch is split into micro-batches and over processes, and on train vs eval mode);
GroupNorm normalises each example on its own, so one image gets the same logits in any
batch, on any number of processes, and a checkpoint holds no running statistics.

Every 4x4 conv with padding 1 maps a side n to n // 2 (stride 2) or n - 1 (stride 1), so
an S x S image leaves (S // 2^n_layers) - 2 patch logits per side, which must be >= 1:
8 x 8 digits allow n_layers = 1 (2 x 2 logits), 28 x 28 MNIST 1 to 3.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..nn import norm_groups


def patch_map_side(image_size: int, n_layers: int) -> int:
    """The side of the discriminator's logit map on S x S images (<= 0: none left)."""
    side = image_size
    for _ in range(n_layers):
        side //= 2                     # 4x4 conv, stride 2, padding 1
    return side - 2                    # two 4x4 convs, stride 1, padding 1


def valid_layers(image_size: int) -> list[int]:
    """The n_layers that leave at least one patch logit on S x S images."""
    return [n for n in range(1, image_size.bit_length() + 1) if patch_map_side(image_size, n) >= 1]


def check_layers(image_size: int, n_layers: int) -> None:
    """ValueError unless n_layers leaves a spatial output on S x S images, naming the valid values."""
    if n_layers < 1 or patch_map_side(image_size, n_layers) < 1:
        sides = [image_size]
        for _ in range(max(n_layers, 0)):
            sides.append(sides[-1] // 2)
        sides += [sides[-1] - 1, sides[-1] - 2]
        raise ValueError(f"a discriminator with n_layers={n_layers} leaves no patch logits on {image_size} x "
                         f"{image_size} images (sides {' -> '.join(map(str, sides))}); valid n_layers for "
                         f"{image_size}: {valid_layers(image_size)}")


class PatchDiscriminator(nn.Module):
    """pix2pix / taming's NLayerDiscriminator with GroupNorm: images (B, in_channels, S, S)
    in [-1, 1] -> patch logits (B, 1, s, s), s = `patch_map_side(S, n_layers)`."""

    def __init__(self, in_channels: int = 1, channels: int = 32, n_layers: int = 1, image_size: int | None = None):
        super().__init__()
        if channels < 1 or n_layers < 1:
            raise ValueError(f"PatchDiscriminator needs channels >= 1 and n_layers >= 1; got {channels}, {n_layers}")
        if image_size is not None:
            check_layers(image_size, n_layers)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for n in range(1, n_layers + 1):           # n_layers - 1 stride-2 convs, then one stride-1 conv
            out = channels * min(2**n, 8)
            # no bias before a norm (taming: no bias before BatchNorm); the norm's affine shift is the bias
            layers += [nn.Conv2d(width, out, 4, stride=2 if n < n_layers else 1, padding=1, bias=False),
                       nn.GroupNorm(norm_groups(out), out), nn.LeakyReLU(0.2)]
            width = out
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """pix2pix / taming's `weights_init`: conv weights N(0, 0.02), norm scales N(1, 0.02),
        norm shifts 0; conv biases 0 here (taming leaves PyTorch's default)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)
