"""hirune.nn.patches: patchify / unpatchify (exact inverses, the documented token layout) and
the 2-D sin-cos position table against its formula (and as DiT's fixed position table)."""

from __future__ import annotations

import math

import pytest
import torch

from hirune.models import build_model
from hirune.nn import patchify, sincos_position_embedding, unpatchify

# Small enough for milliseconds on a CPU.
SMALL = {"dit": dict(size="T/2", depth=2, hidden_size=64, num_heads=4)}


def small(kind: str, **overrides) -> torch.nn.Module:
    return build_model(kind, {**SMALL[kind], "in_channels": 1, "image_size": 8, **overrides})


# ---------------------------------------------------------------- patches and positions

@pytest.mark.parametrize("C, H, W, p", [(1, 8, 8, 2), (3, 28, 28, 7), (4, 12, 8, 4), (2, 6, 6, 1)])
def test_patchify_and_unpatchify_are_exact_inverses_with_the_documented_layout(C, H, W, p):
    x = torch.randn(2, C, H, W)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (H // p) * (W // p), p * p * C)
    assert torch.equal(unpatchify(tokens, p, H, W), x)
    assert torch.equal(patchify(unpatchify(tokens, p, H, W), p), tokens)
    # token i * (W / p) + j holds patch (i, j), features ordered (row, column, channel)
    for b, ch, row, col in [(0, 0, 0, 0), (1, C - 1, H - 1, W - 1), (1, C // 2, H // 2 + 1, 1)]:
        i, r, j, c = row // p, row % p, col // p, col % p
        assert tokens[b, i * (W // p) + j, (r * p + c) * C + ch] == x[b, ch, row, col]


def test_sincos_position_table_matches_the_formula():
    dim, rows, cols = 16, 3, 5
    quarter = dim // 4
    expected = torch.zeros(rows * cols, dim, dtype=torch.float64)
    for i in range(rows):
        for j in range(cols):
            for k in range(quarter):
                w = 10_000.0 ** (-k / quarter)
                # [sin(j w) | cos(j w) | sin(i w) | cos(i w)]: column first, then row (MAE, DiT)
                expected[i * cols + j, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]] = torch.tensor(
                    [math.sin(j * w), math.cos(j * w), math.sin(i * w), math.cos(i * w)], dtype=torch.float64)
    table = sincos_position_embedding(dim, rows, cols)
    assert table.dtype == torch.float32
    torch.testing.assert_close(table.double(), expected, atol=1e-7, rtol=0)
    model = small("dit", hidden_size=16, num_heads=2)
    assert torch.equal(model.pos_embed[0], sincos_position_embedding(16, 4, 4))
