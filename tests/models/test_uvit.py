"""The U-ViT backbone (hirune.models.uvit, Bao et al. 2023): long skips that are last in first
out and the patch positions' sin-cos start.  What it shares with every network (shapes, zero
at init, conditioning, gradients, time, named sizes, bad configs) is tested in
test_networks.py, its parameter counts with DiT's in test_dit.py, its pieces (patches,
positions, attention) in tests/nn/."""

from __future__ import annotations

import pytest
import torch

from hirune.nn import sincos_position_embedding
from networks import perturb_zero_init, small

# ---------------------------------------------------------------- U-ViT

def test_uvit_long_skips_are_last_in_first_out():
    model = perturb_zero_init(small("uvit", depth=5))
    kept, received = [], []
    for block in model.in_blocks:
        block.register_forward_hook(lambda mod, args, out: kept.append(out))
    for block in model.out_blocks:
        block.skip_linear.register_forward_pre_hook(lambda mod, args: received.append(args[0].chunk(2, -1)[1]))
    model(torch.randn(2, 1, 8, 8), torch.tensor([3.0, 4.0]))
    assert len(kept) == len(received) == 2
    for skip, out in zip(received, reversed(kept)):
        assert torch.equal(skip, out)


def test_uvit_without_long_skips_is_the_plain_chain_of_its_blocks():
    """long_skip=False (the paper's ablation, fig. 2(a)): the same network less the skips' Linear,
    and its forward is every block in turn, nothing carried across."""
    from hirune.models.uvit import unpatchify

    model = perturb_zero_init(small("uvit", depth=5, long_skip=False))
    skipped = small("uvit", depth=5)
    assert set(skipped.state_dict()) - set(model.state_dict()) == {f"out_blocks.{i}.skip_linear.{p}"
                                                                    for i in range(2) for p in ("weight", "bias")}
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3.0, 4.0])
    h = model.tokens(x, t, None)
    for block in [*model.in_blocks, model.mid_block, *model.out_blocks]:
        h = block(h)
    patches = model.decoder_pred(model.norm(h))[:, model.extras:]
    chain = model.final_conv(unpatchify(patches, model.config.patch_size, 8, 8))
    assert torch.allclose(model(x, t), chain, atol=1e-6) and chain.abs().max() > 0
    with pytest.raises(TypeError, match="UViTConfig.long_skip must be bool"):
        small("uvit", long_skip="no")


@pytest.mark.parametrize("num_classes, extras", [(None, 1), (10, 2)])
def test_uvit_patch_positions_start_as_the_sin_cos_table(num_classes, extras):
    """The patch tokens' rows of the learned table start as the 2-D sin-cos table (after the
    time and class rows, which keep the paper's truncated normal); pos_init='trunc_normal'
    is the paper's init for every row.  Both stay learned."""
    model = small("uvit", num_classes=num_classes)
    assert model.extras == extras and model.pos_embed.requires_grad
    table = model.pos_embed[0].detach()
    assert torch.equal(table[extras:], sincos_position_embedding(64, 4, 4))
    assert table[:extras].abs().max() < 0.12                                       # std 0.02
    paper = small("uvit", num_classes=num_classes, pos_init="trunc_normal").pos_embed[0].detach()
    assert paper.abs().max() < 0.12 and 0.015 < paper.std() < 0.025


