"""Rotary position embedding (RoPE; Su et al. 2021, "RoFormer: Enhanced Transformer with
Rotary Position Embedding") and CogVideoX's 3-D RoPE for video tokens (Yang et al. 2024,
"CogVideoX: Text-to-Video Diffusion Models with An Expert Transformer", sec. 2.2).

RoPE (RoFormer sec. 3.2, eq. 13-16).  The d channels of a query or key are read as d/2
pairs (x_{2i}, x_{2i+1}), each a point of the plane; a token at position m turns pair i
by the angle m w_i, with frequencies w_i = theta^(-2i/d), i = 0 .. d/2 - 1 (theta = 10000):

    (x_{2i}, x_{2i+1}) -> (x_{2i} cos(m w_i) - x_{2i+1} sin(m w_i),
                           x_{2i} sin(m w_i) + x_{2i+1} cos(m w_i))

A rotation keeps the norm, and since R(m)^T R(n) = R(n - m), the attention logit of a query
at m and a key at n, q^T R(m)^T R(n) k, depends on the positions only through the offset
n - m (eq. 16): relative positions from an absolute code, with nothing learned.  Pairs of
neighbouring channels are the layout of RoFormer's code and of CogVideoX (diffusers'
`apply_rotary_emb` with `use_real_unbind_dim=-1`).

3-D RoPE (CogVideoX sec. 2.2, "3D-RoPE").  A video token has three coordinates (t, y, x):
its frame and its row and column in the patch grid.  Each head's d channels are split
along the axes, t : y : x = 2/8 : 3/8 : 3/8 (d/4, 3d/8, 3d/8 channels, in that order), and
each part is a 1-D RoPE of its own axis with its own frequency table (theta^(-2i/d_axis)):
the three rotations act on disjoint channels, so a logit depends on the offset per axis
(dt, dy, dx).  Each part must hold whole pairs, so 3d/8 is even: d divisible by 16 (`axis_split`).
Text tokens are not rotated (CogVideoX rotates only the video part of the joint sequence).

Positions (`video_positions`).  "extrapolate": integer coordinates 0, 1, 2, ... on every
axis, so a larger grid than the training one reaches angles never seen.  "interpolate":
the coordinates of a grid of `size` tokens along an axis are scaled onto a base grid of
`base` tokens, i * base / size, so any resolution spans the angles of the base (position
interpolation, Chen et al. 2023, on each axis; CogVideoX trains progressively from low to
high resolution).  At size = base both are the integers.  diffusers' CogVideoX 1.0 pipeline
(`get_resize_crop_region_for_grid` + `get_3d_rotary_pos_embed`) maps the spatial grid onto
the base too, and agrees with this for a grid of the base's aspect ratio; it keeps time at
integers.  A grid of another aspect ratio it fits into a centred crop of the base instead of
scaling each axis, and there its `linspace(top, (top + height) (g - 1) / g, g)` is not the
crop's own grid (HunyuanDiT's `np.linspace(top, top + height, g, endpoint=False)`): a 2 x 4
grid on a 4 x 4 base gets rows 1, 1.5 and columns 0, 1, 2, 3.
"""

from __future__ import annotations

import torch
from torch import Tensor

# where a grid's coordinates come from (see the module docstring)
ROPE_SCALINGS = ("extrapolate", "interpolate")

# A RoPE table: cos and sin of each token's angle per channel pair, each (..., N, d/2).
Rotary = tuple[Tensor, Tensor]


def rope_frequencies(dim: int, theta: float = 10_000.0) -> Tensor:
    """w_i = theta^(-2i / dim), i = 0 .. dim/2 - 1 (RoFormer eq. 15): (dim/2,) float64."""
    if dim < 2 or dim % 2:
        raise ValueError(f"dim={dim} is not valid; valid: a positive even number (channels rotate in pairs)")
    return theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def rope_angles(positions: Tensor, dim: int, theta: float = 10_000.0) -> Tensor:
    """The angles m w_i of tokens at `positions` (..., N) (any real numbers) for `dim`
    channels: (..., N, dim/2) float64."""
    return positions.double()[..., None] * rope_frequencies(dim, theta).to(positions.device)


def rotary(angles: Tensor, dtype: torch.dtype = torch.float32) -> Rotary:
    """The table (cos, sin) of angles (..., N, d/2), in `dtype`."""
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, table: Rotary) -> Tensor:
    """Turn each channel pair (x_{2i}, x_{2i+1}) of x (..., N, d) by its angle (see the
    module docstring); table: (cos, sin), each broadcastable to (..., N, d/2).  Computed
    in the table's dtype (float32 for half x), returned in x's dtype."""
    cos, sin = table
    pairs = x.to(cos.dtype).unflatten(-1, (-1, 2))                    # (..., N, d/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    turned = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return turned.flatten(-2).to(x.dtype)


def axis_split(head_dim: int) -> tuple[int, int, int]:
    """The channels of each head given to (t, y, x) in 3-D RoPE: (d/4, 3d/8, 3d/8)
    (CogVideoX sec. 2.2).  ValueError unless every part holds whole pairs (d % 16 == 0)."""
    if head_dim < 16 or head_dim % 16:
        raise ValueError(f"head_dim={head_dim} is not valid for 3-D RoPE; valid: a multiple of 16 (t : y : x = "
                         "2/8 : 3/8 : 3/8 of the channels, each part an even number of channels)")
    return head_dim // 4, head_dim // 8 * 3, head_dim // 8 * 3


def grid_coordinates(size: int | Tensor, count: int, scaling: str, base: float, device=None) -> Tensor:
    """The coordinates 0 .. count - 1 of one axis, extrapolated (integers) or interpolated
    onto `base` (i * base / size).  size: the grid's real extent on the axis, an int or a
    (B,) tensor (one per example: frame packing) -> (count,) or (B, count) float64."""
    if scaling not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling={scaling!r} is not valid; valid: {list(ROPE_SCALINGS)}")
    i = torch.arange(count, dtype=torch.float64, device=device)
    if scaling == "extrapolate":
        return i
    if isinstance(size, Tensor):
        return i * (base / size.to(device=device, dtype=torch.float64))[:, None]
    return i * (base / size)


def video_positions(frames: int, rows: int, cols: int, scaling: str = "extrapolate",
                    base: tuple[float, float, float] | None = None, real_frames: Tensor | None = None,
                    device=None) -> tuple[Tensor, Tensor, Tensor]:
    """The (t, y, x) coordinates of the frames x rows x cols video tokens, in the token order
    of `hirune.nn.patchify` per frame, frame after frame: token n = (f rows + i) cols + j.
    Each (N,) float64, or t (B, N) when `real_frames` (B,) gives each example its own number
    of frames to interpolate (frame packing: a video of real_frames[b] frames padded to
    `frames`).  base: the (T, H, W) grid in tokens that "interpolate" maps onto."""
    if scaling == "interpolate" and base is None:
        raise ValueError("rope_scaling='interpolate' needs base=(T, H, W), the grid in tokens it maps onto")
    base = base or (frames, rows, cols)
    t = grid_coordinates(frames if real_frames is None else real_frames, frames, scaling, base[0], device)
    y = grid_coordinates(rows, rows, scaling, base[1], device)
    x = grid_coordinates(cols, cols, scaling, base[2], device)
    per_frame = rows * cols
    t = t.repeat_interleave(per_frame, dim=-1)                                 # (..., N)
    return t, y.repeat_interleave(cols).repeat(frames), x.repeat(rows * frames)


def rope_3d(head_dim: int, t: Tensor, y: Tensor, x: Tensor, theta: float = 10_000.0,
            dtype: torch.dtype = torch.float32) -> Rotary:
    """CogVideoX's 3-D RoPE table for tokens at (t, y, x) (each (N,) or (B, N), broadcast
    together): the angles of each axis over its own channels (`axis_split`), concatenated
    [t | y | x] -> (cos, sin), each (..., N, head_dim/2)."""
    dim_t, dim_y, dim_x = axis_split(head_dim)
    t, y, x = torch.broadcast_tensors(t, y, x)
    angles = torch.cat([rope_angles(t, dim_t, theta), rope_angles(y, dim_y, theta), rope_angles(x, dim_x, theta)],
                       dim=-1)
    return rotary(angles, dtype)


__all__ = ["ROPE_SCALINGS", "Rotary", "apply_rotary", "axis_split", "grid_coordinates", "rope_3d", "rope_angles",
           "rope_frequencies", "rotary", "video_positions"]
