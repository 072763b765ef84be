"""hirune.nn.rope: rotary position embedding (RoFormer) and CogVideoX's 3-D RoPE.  The
rotation keeps norms; a query-key logit depends on the positions only through their offset
on each axis (the closed form of RoFormer eq. 16, per channel pair); the channels of each
axis are the documented t : y : x = 2/8 : 3/8 : 3/8; interpolation at the base grid is
extrapolation; and the tables and rotations equal diffusers' `get_3d_rotary_pos_embed` +
`apply_rotary_emb` (CogVideoX), where a wrong axis split or swapped rows / columns are caught."""

from __future__ import annotations

import pytest
import torch

from hirune.nn.rope import (apply_rotary, axis_split, grid_coordinates, rope_3d, rope_angles, rope_frequencies,
                            rotary, video_positions)


def test_rotation_keeps_the_norm_of_every_channel_pair():
    x = torch.randn(2, 3, 10, 32, dtype=torch.float64)
    table = rotary(rope_angles(torch.randn(10) * 50, 32), torch.float64)
    out = apply_rotary(x, table)
    pairs = lambda v: v.unflatten(-1, (-1, 2)).norm(dim=-1)  # noqa: E731
    assert torch.allclose(pairs(out), pairs(x), atol=1e-12)
    assert not torch.allclose(out, x)
    assert torch.equal(apply_rotary(x, rotary(torch.zeros(10, 16), torch.float64)), x)  # position 0: identity


def closed_form_logit(q, k, dq, dk, w) -> torch.Tensor:
    """q^T R(m)^T R(n) k = sum_i (q_a k_a + q_b k_b) cos(phi_i) + (q_b k_a - q_a k_b) sin(phi_i),
    phi_i = (n - m) w_i over the pairs (a, b) = (2i, 2i + 1) (RoFormer eq. 16)."""
    qa, qb, ka, kb = q[0::2], q[1::2], k[0::2], k[1::2]
    phi = (dk - dq) * w
    return ((qa * ka + qb * kb) * phi.cos() + (qb * ka - qa * kb) * phi.sin()).sum()


def test_3d_logit_depends_only_on_the_offset_per_axis_in_closed_form():
    d = 48
    dims = axis_split(d)
    w = torch.cat([rope_frequencies(n) for n in dims])                    # (d/2,) the frequency of each pair
    axis = torch.repeat_interleave(torch.arange(3), torch.tensor([n // 2 for n in dims]))  # pair -> t, y, x
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)

    def rotated(m, n):
        """q at position m, k at n (each (t, y, x)), rotated."""
        pos = torch.tensor([m, n], dtype=torch.float64)                  # (2 tokens, 3 axes)
        rq, rk = apply_rotary(torch.stack([q, k]), rope_3d(d, *pos.T, dtype=torch.float64))
        return rq.dot(rk)

    for m, n in [((0, 0, 0), (1, 2, 3)), ((2, 5, 1), (0, 1, 7)), ((1.5, 0.25, 3.0), (4.0, 2.0, 0.5))]:
        per_pair_m, per_pair_n = torch.tensor(m).double()[axis], torch.tensor(n).double()[axis]
        assert torch.allclose(rotated(m, n), closed_form_logit(q, k, per_pair_m, per_pair_n, w), atol=1e-10)
        shift = (3, 7, 11)                                                  # the same offsets elsewhere
        moved = rotated(tuple(a + s for a, s in zip(m, shift)), tuple(a + s for a, s in zip(n, shift)))
        assert torch.allclose(moved, rotated(m, n), atol=1e-10)


def test_axis_split_gives_t_y_x_the_documented_channels():
    assert axis_split(64) == (16, 24, 24) and axis_split(16) == (4, 6, 6)
    d = 32
    x = torch.randn(1, 1, 2, d, dtype=torch.float64)
    zero = torch.zeros(2, dtype=torch.float64)
    moved = torch.tensor([0.0, 1.0], dtype=torch.float64)                 # the second token moves on one axis
    changed = []
    for t, y, xx in [(moved, zero, zero), (zero, moved, zero), (zero, zero, moved)]:
        out = apply_rotary(x, rope_3d(d, t, y, xx, dtype=torch.float64))
        changed.append((out[0, 0, 1] != x[0, 0, 1]).nonzero().flatten())
    assert torch.equal(changed[0], torch.arange(0, 8))                     # t: d/4 channels first
    assert torch.equal(changed[1], torch.arange(8, 20))                    # y: the next 3d/8
    assert torch.equal(changed[2], torch.arange(20, 32))                   # x: the last 3d/8


@pytest.mark.parametrize("head_dim", [8, 24, 40, 4, 0])
def test_head_dims_that_do_not_split_into_pairs_are_refused(head_dim):
    with pytest.raises(ValueError, match=rf"head_dim={head_dim} is not valid for 3-D RoPE; valid: a multiple of 16"):
        axis_split(head_dim)


def test_interpolation_at_the_base_grid_equals_extrapolation_and_scales_elsewhere():
    base = (3, 4, 6)
    ext = video_positions(3, 4, 6)
    inter = video_positions(3, 4, 6, "interpolate", base)
    assert all(torch.equal(a, b) for a, b in zip(ext, inter))
    t, y, x = video_positions(2, 2, 3, "interpolate", base)               # half the base grid: steps of 1.5, 2, 2
    assert torch.equal(t.unique(), torch.tensor([0.0, 1.5], dtype=torch.float64))
    assert torch.equal(y.unique(), torch.tensor([0.0, 2.0], dtype=torch.float64))
    assert torch.equal(x.unique(), torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64))
    # the token order is patchify's per frame, frame after frame: n = (f rows + i) cols + j
    assert torch.equal(torch.stack([t, y, x], 1)[7], torch.tensor([1.5, 0.0, 2.0], dtype=torch.float64))
    # frame packing: each example's own number of frames is the size it interpolates
    per_example = grid_coordinates(torch.tensor([3, 1, 2]), 3, "interpolate", 3.0)
    assert torch.equal(per_example, torch.tensor([[0, 1, 2], [0, 3, 6], [0, 1.5, 3]], dtype=torch.float64))
    assert torch.equal(grid_coordinates(torch.tensor([3, 1]), 3, "extrapolate", 3.0), torch.arange(3.0).double())
    with pytest.raises(ValueError, match=r"rope_scaling='stretch' is not valid; valid: \['extrapolate', "):
        grid_coordinates(3, 3, "stretch", 3.0)


# ---------------------------------------------------------------- diffusers as the oracle

def diffusers_rope(head_dim, frames, rows, cols, base_rows, base_cols):
    """diffusers' CogVideoX 1.0 table, built as its pipeline builds it (grid mapped onto the base crop)."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import get_resize_crop_region_for_grid

    crops = get_resize_crop_region_for_grid((rows, cols), base_cols, base_rows)
    return get_3d_rotary_pos_embed(embed_dim=head_dim, crops_coords=crops, grid_size=(rows, cols),
                                   temporal_size=frames)


@pytest.mark.parametrize("frames, rows, cols, base", [(3, 4, 6, (3, 4, 6)), (2, 5, 3, (2, 5, 3)),
                                                       (3, 2, 3, (3, 4, 6)), (4, 3, 3, (4, 6, 6))])
def test_3d_rope_equals_diffusers_cogvideox_rope(frames, rows, cols, base):
    """Base = the grid: integer positions on both sides; a grid of the base's aspect at a
    lower resolution: diffusers' pipeline interpolates space onto the base (time stays
    integer: these cases keep frames = base frames), as `rope_scaling='interpolate'` does."""
    pytest.importorskip("diffusers")
    from diffusers.models.embeddings import apply_rotary_emb

    d = 32
    their_cos, their_sin = diffusers_rope(d, frames, rows, cols, base[1], base[2])
    scaling = "interpolate" if (rows, cols) != base[1:] else "extrapolate"
    cos, sin = rope_3d(d, *video_positions(frames, rows, cols, scaling, base))
    assert cos.shape == (frames * rows * cols, d // 2)
    assert torch.allclose(cos.repeat_interleave(2, -1), their_cos, atol=1e-6)   # diffusers repeats each pair's value
    assert torch.allclose(sin.repeat_interleave(2, -1), their_sin, atol=1e-6)
    x = torch.randn(2, 3, frames * rows * cols, d)
    assert torch.allclose(apply_rotary(x, (cos, sin)), apply_rotary_emb(x, (their_cos, their_sin)), atol=1e-5)

    # the harness catches a wrong split (t : y : x = 1/2 : 1/4 : 1/4) and rows and columns swapped
    t, y, xx = video_positions(frames, rows, cols, scaling, base)
    wrong = torch.cat([rope_angles(t, 16), rope_angles(y, 8), rope_angles(xx, 8)], -1)
    assert not torch.allclose(wrong.cos().float().repeat_interleave(2, -1), their_cos, atol=1e-3)
    if rows != cols:
        swapped, _ = rope_3d(d, t, xx, y)
        assert not torch.allclose(swapped.repeat_interleave(2, -1), their_cos, atol=1e-3)
