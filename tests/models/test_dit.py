"""The DiT backbone (hirune.models.dit, Peebles & Xie 2023): adaLN-Zero blocks that start as the
identity, the papers' parameter counts (DiT's and U-ViT's), diffusers' DiTTransformer2DModel as
an oracle, and a short training run on the digits with a checkpoint round trip.  What it shares
with every network is tested in test_networks.py, its pieces (patches, positions, attention)
in tests/nn/."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hirune.models import build_model
from networks import perturb_zero_init, small

# ---------------------------------------------------------------- DiT

def test_dit_blocks_start_as_the_identity():
    """adaLN-Zero: all six modulation vectors start at 0, so each block returns its input
    (the zero final layer alone would hide a block that does not)."""
    model = small("dit", num_classes=3)
    c = model.embed(torch.tensor([5.0, 900.0]), torch.tensor([0, 3]))
    h = torch.randn(2, 16, 64)
    for block in model.blocks:
        assert torch.equal(block(h, c), h)


DIT_PAPER = {"S/2": 33e6, "B/2": 130e6, "L/2": 458e6, "XL/2": 675e6}
# Table 1 of Bao et al. (2023), each size in a setting of the paper.
UVIT_PAPER = {"small": (44e6, dict(in_channels=3)),  # CIFAR-10
              "mid": (131e6, dict(in_channels=3, image_size=64, patch_size=4, num_classes=1000)),  # ImageNet 64
              "large": (287e6, dict(in_channels=4, num_classes=1000)),  # ImageNet 256 latents
              "huge": (501e6, dict(in_channels=4, num_classes=1000))}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_papers():
    with torch.device("meta"):
        dits = {name: build_model("dit", size=name, in_channels=4, image_size=32, num_classes=1000,
                                  learned_sigma=True) for name in DIT_PAPER}
        uvits = {name: build_model("uvit", {"size": name, "image_size": 32, **kw})
                 for name, (_, kw) in UVIT_PAPER.items()}
    for name, expected in DIT_PAPER.items():
        assert abs(count(dits[name]) / expected - 1) < 0.01, (name, count(dits[name]))
    assert count(dits["XL/2"]) + dits["XL/2"].pos_embed.numel() == 675_129_632
    for name, (expected, _) in UVIT_PAPER.items():
        assert abs(count(uvits[name]) / expected - 1) < 0.01, (name, count(uvits[name]))


# ---------------------------------------------------------------- oracle: diffusers' DiT

def diffusers_state_dict(model) -> dict[str, torch.Tensor]:
    """hirune DiT weights under diffusers' DiTTransformer2DModel names (`hirune.training.diffusers_names`)."""
    from hirune.training.diffusers_names import dit_to_diffusers

    return dit_to_diffusers(model.state_dict(), model.config.depth, model.config.hidden_size)


def test_dit_equals_diffusers_dit_transformer_with_the_same_weights():
    """hirune's DiT T/2 (8 x 8 x 4, 10 classes, learned sigma) and diffusers' model with the
    same weights agree to float64 round-off.  Two settings make diffusers compute DiT's
    own function: norm_eps=1e-6 (DiT's LayerNorm eps; diffusers' default 1e-5 reaches the
    MLP's LayerNorm) and downscale_freq_shift=0 in each block's time embedding: diffusers'
    DiT uses frequencies exp(-ln(10^4) k / (128 - 1)), DiT's code exp(-ln(10^4) k / 128)
    (hirune and DiT agree).  Each of the two alone is shown to change the output."""
    diffusers = pytest.importorskip("diffusers")
    model = perturb_zero_init(build_model("dit", size="T/2", in_channels=4, image_size=8, num_classes=10,
                                          learned_sigma=True)).double()
    c = model.config
    theirs = diffusers.DiTTransformer2DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.hidden_size // c.num_heads, in_channels=4,
        out_channels=c.output_channels, num_layers=c.depth, sample_size=c.image_size, patch_size=c.patch_size,
        num_embeds_ada_norm=c.num_classes, norm_eps=1e-6).double().eval()  # eval: no label dropout
    theirs.load_state_dict(diffusers_state_dict(model), strict=True)  # every diffusers weight mapped
    # time in float32 for both (hirune's protocol; diffusers computes the sinusoids in float32 anyway)
    x, t = torch.randn(4, 4, 8, 8, dtype=torch.float64), torch.tensor([0.0, 3.0, 500.0, 999.0])
    y = torch.tensor([0, 9, 10, 4])  # 10: the null label in both
    with torch.no_grad():
        ours = model(x, t, y)
        shifted = theirs(x, t, class_labels=y).sample
        for block in theirs.transformer_blocks:
            block.norm1.emb.time_proj.downscale_freq_shift = 0
        reference = theirs(x, t, class_labels=y).sample
        for block in theirs.transformer_blocks:
            block.norm3.eps = 1e-5
        default_eps = theirs(x, t, class_labels=y).sample
    assert ours.shape == reference.shape == (4, 8, 8, 8)  # (prediction | variance) on dim 1 in both
    assert ours.abs().mean() > 0.1
    assert (ours - reference).abs().max() < 1e-10
    assert (ours - shifted).abs().max() > 1e-3  # diffusers' own frequencies: a different function
    assert (ours - default_eps).abs().max() > 1e-7  # and its default eps is visible too


# ---------------------------------------------------------------- training

def test_dit_trains_on_the_digits_and_its_checkpoint_reloads(tmp_path):
    from hirune.training import TrainConfig, load, train

    cfg = TrainConfig.from_dict(dict(dataset="digits", model="dit", model_config={"size": "T/2", "depth": 2},
                                     class_conditional=True, process="ddpm", steps=20, batch_size=64, lr=2e-3,
                                     warmup=2, log_every=1, ckpt_every=20, sample_every=0,
                                     out=str(tmp_path / "dit")))
    run = train(cfg, progress=False)
    assert run.model.config.image_size == 8 and run.model.config.in_channels == 1  # from the data
    assert run.model.config.num_classes == 10 and run.model.config.time_scale == 1.0
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "dit" / "metrics.jsonl")]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:3]) / 3, losses  # starts at ~1 (zero output)
    loaded = load(tmp_path / "dit", use_ema=False)
    assert loaded.model.config == run.model.config
    for (name, a), b in zip(run.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 10])
    run.model.eval()
    assert torch.equal(loaded.model(x, t, y), run.model(x, t, y))
