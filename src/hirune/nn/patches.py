"""Images as sequences of patches (ViT, Dosovitskiy et al. 2021; DiT; U-ViT).

An image (B, C, H, W) is cut into p x p patches, read row by row over the patch grid:
token n = i * (W / p) + j is the patch at grid row i, column j, and its p * p * C
features are ordered (row in the patch, column in the patch, channel), the layout of
DiT's and U-ViT's output projections.  `unpatchify` inverts `patchify` exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def check_patch_size(image_size: int, patch_size: int) -> None:
    """ValueError unless `patch_size` divides `image_size`, listing the sizes that do."""
    if patch_size < 1 or image_size % patch_size:
        valid = [p for p in range(1, image_size + 1) if image_size % p == 0]
        raise ValueError(f"image size {image_size} is not divisible by patch size {patch_size}; "
                         f"valid patch sizes: {valid}")


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, N, p * p * C) with N = (H / p) (W / p) (see the module docstring)."""
    B, C, H, W = x.shape
    p = patch_size
    check_patch_size(H, p)
    check_patch_size(W, p)
    x = x.reshape(B, C, H // p, p, W // p, p)                    # (B, C, i, row, j, col)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(tokens: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """(B, N, p * p * C) -> (B, C, height, width): the inverse of `patchify`."""
    B, N, F = tokens.shape
    p = patch_size
    rows, cols, C = height // p, width // p, F // (p * p)
    if rows * p != height or cols * p != width or rows * cols != N or C * p * p != F:
        raise ValueError(f"{N} tokens of {F} features are not the {p} x {p} patches of a "
                         f"{height} x {width} image")
    x = tokens.reshape(B, rows, cols, p, p, C)                  # (B, i, j, row, col, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, height, width)


def sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """(M,) positions -> (M, dim): [sin(pos w_k) | cos(pos w_k)], w_k = 10000^(-2k / dim),
    k = 0 .. dim/2 - 1 (the sinusoids of Vaswani et al. 2017, sec. 3.5, halves concatenated)."""
    omega = 10_000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_position_embedding(dim: int, rows: int, cols: int) -> Tensor:
    """The fixed 2-D sin-cos position embedding of MAE (He et al. 2022) and DiT:
    (rows * cols, dim) float32, token order as in `patchify`.  The first dim/2 channels
    encode the token's column j, the last dim/2 its row i, each with `sincos_1d`; dim
    must be divisible by 4."""
    if dim % 4:
        raise ValueError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    i, j = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, j.flatten()), sincos_1d(dim // 2, i.flatten())], dim=1).float()


class PatchEmbed(nn.Module):
    """x (B, C, H, W) -> tokens (B, N, dim): a linear map of each p x p patch, written as a
    p x p convolution with stride p (ViT's patch embedding)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)

    def init_like_linear(self) -> None:
        """Xavier-uniform init of the (dim, C p p) matrix the conv applies, bias zero (DiT)."""
        nn.init.xavier_uniform_(self.proj.weight.view(self.proj.out_channels, -1))
        nn.init.zeros_(self.proj.bias)
