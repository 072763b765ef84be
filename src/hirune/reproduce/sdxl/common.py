"""What the SDXL notes share: the small UNet every run trains, training a preset into the note's
folder, drawing DDIM samples (seed 0: the same noise in every column of a figure) and the
evaluator's Frechet distance."""

from __future__ import annotations

from pathlib import Path

import torch

from ..systems.bases import TINY_UNET, train_base

# the small UNet of every run at the small and full budgets (32 channels, [1, 2, 2], one ResBlock
# a level, attention at 7 x 7: 0.3 M weights); tiny: the systems notes' UNet, trained for seconds
UNET = {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [4],
        "head_channels": 32}
NETWORKS = {"tiny": TINY_UNET, "small": UNET, "full": UNET}


def trained(folder: Path, preset: str, steps: int, budget: str, **overrides):
    """`preset` trained `steps` steps into `folder` with the budget's UNet (tiny: batch 8), loaded."""
    from ...training import load

    sizes = {"model_config": NETWORKS[budget], **({"batch_size": 8} if budget == "tiny" else {})}
    return load(train_base(preset, folder, steps, **{**sizes, **overrides}))


@torch.no_grad()
def draw(run, n: int, steps: int, **options) -> torch.Tensor:
    """n DDIM samples (eta 0, seed 0) of `run` in [-1, 1]; options: the family's (original_size,
    crop, size, labels, ...)."""
    from ...inference.generate import generate

    return generate(run, n, "ddim", steps, seed=0, progress=False, **options)[0].x.cpu().clamp(-1, 1)


def frechet(dataset: str, named: dict[str, torch.Tensor]) -> dict[str, float]:
    """The evaluator's Frechet distance of each named image set to `dataset`'s test split, and
    "real_vs_real": as many training images as the largest set against it (the test split's
    features computed once, `metrics.evaluator.reference_of`)."""
    from ...metrics.evaluator import reference_of

    reference = reference_of(dataset)
    return {**{name: reference.frechet(x) for name, x in named.items()},
            "real_vs_real": reference.real_vs_real(max(len(x) for x in named.values()))}


def picture(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] as one (H', W') picture in [0, 1], nrow images a row, for imshow."""
    from ...video_io import tile

    x = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return tile(x, nrow, 1, pad_value=255)[..., 0].float() / 255
