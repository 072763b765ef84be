"""benchmarks/dit_speed.py's FLOP count: the analytic forward count of a DiT equals what
torch's FlopCounterMode sees, dropping the attention term is caught, a training step counts
3 x the forward, and the count reproduces DiT's Table 4 (which counts multiply-adds)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hirune.models import build_model
from benchmark_scripts import load_benchmark

dit_speed = load_benchmark("dit_speed")


def tiny_dit():
    return build_model("dit", size="T/2", depth=2, hidden_size=64, num_heads=4, in_channels=4, image_size=8,
                       num_classes=10, learned_sigma=True)


def test_analytic_forward_flops_match_flop_counter_and_a_missing_attention_term_is_caught():
    model = tiny_dit()
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.tensor([3])
    analytic = dit_speed.dit_forward_flops(model.config)
    counted = dit_speed.counted_flops(model, x, t, y)
    assert abs(analytic["total"] / counted - 1) < 0.01
    broken = analytic["total"] - analytic["attention"]            # 4% of this tiny model
    assert abs(broken / counted - 1) > 0.01
    # the math backend is what makes attention visible on a CPU: the fused kernel has no formula
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model(x, t, y)
    if plain.get_total_flops() < counted:
        assert plain.get_total_flops() == pytest.approx(broken, rel=1e-9)
    # forward + backward = 3 x forward, less the input gradients nobody needs: of the patch
    # embedding (x) and of the time MLP's first linear (the sinusoids)
    step = dit_speed.counted_flops(model, x, t, y, backward=True)
    unneeded = analytic["patch_embed"] + 2 * dit_speed.FREQUENCY_DIM * model.config.hidden_size
    assert step == pytest.approx(3 * counted - unneeded, rel=1e-9)


@pytest.mark.parametrize("size", ["S/2", "B/2", "L/2", "XL/2", "XL/8"])
def test_forward_flops_reproduce_the_papers_table_at_256_px(size):
    from hirune.models.dit import DIT_SIZES, DiTConfig

    config = DiTConfig(in_channels=4, learned_sigma=True, image_size=32, num_classes=1000, **DIT_SIZES[size])
    macs = dit_speed.dit_forward_flops(config)["total"] / 2
    assert macs / 1e9 == pytest.approx(dit_speed.PAPER_GFLOPS[size], rel=0.01)
