"""Progressive training of a video run (CogVideoX, Yang et al. 2024, sec. 3.2): train at a
low resolution first, then go on at a higher one from the same weights.

    hirune train cogvideox-moving-mnist5k-16             16 x 16 clips: 2 x 2 tokens a frame
    hirune train cogvideox-progressive-moving-mnist5k    32 x 32 from its weights (base=RUN)

Nothing in CogVideoX's transformer depends on the grid's size but the positions: the patch
embedding, the blocks and the final layer read one token, or all of them, whatever their
number.  So the new run takes the base's network config and weights whole, with the new
latent size (`sample_size`, `sample_frames`), and one choice: how the tokens of the larger
grid are placed (`hirune.nn.rope`):

    rope_scaling="extrapolate"   integer coordinates 0 .. 3 on a 4-token axis: the offsets
                                 between neighbours stay 1, as the base saw them, and the
                                 larger offsets are new.  CogVideoX's choice ("extrapolation
                                 keeps the relative position between pixels": local detail)
    rope_scaling="interpolate"   the coordinates mapped onto the base's grid, 0, .5, 1, 1.5:
                                 the angles spanned stay the base's, the steps between
                                 neighbours halve (global layout; position interpolation)

`model_config={"rope_scaling": ...}` chooses (and `rope_base`, the grid "interpolate" maps
onto: by default the base's own grid, the positions it was trained on).  Every other key of
the network is the base's, and giving it is refused.  Learned positions have no entry for a
grid larger than the base's table: refused.  The data must be the base's clips at another
registered resolution (`data.original_dataset`; `finetune.check_base`), encoded by the same
VAE; the weights start as the base's EMA, bitwise (`finetune.attach`).
"""

from __future__ import annotations

import dataclasses

from ..nn.rope import ROPE_SCALINGS

# what a progressive run may set of its network; the rest is the base's
POSITION_KEYS = ("rope_scaling", "rope_base")


def network_config(run) -> dict:
    """The base's network config at `run`'s latent size, with the run's position settings."""
    base = run.references["base"]
    given = dict(run.cfg.model_config)
    other = sorted(set(given) - set(POSITION_KEYS))
    if other:
        raise ValueError(f"model_config keys {other} are not valid with base={run.config.base!r}: the network is "
                         f"the base's; valid: {list(POSITION_KEYS)} (rope_scaling one of {list(ROPE_SCALINGS)})")
    _, frames, size, width = run.sample_shape
    if size != width:
        raise ValueError(f"a progressive run needs square latents, got {size} x {width}")
    return resized_config(base.model.config, frames, size, given, where=run.config.base)


def resized_config(base, frames: int, size: int, positions: dict, where: str = "the base") -> dict:
    """The network config `base` (a CogVideoXConfig) for latents of `frames` frames of `size`
    x `size`, with `positions` (keys of POSITION_KEYS) set; "interpolate" maps onto the base's
    own grid unless `rope_base` is given.  Refused: learned positions on another grid."""
    config = dataclasses.asdict(base)
    if config["positions"] == "learned" and (frames, size) != (base.sample_frames, base.sample_size):
        raise ValueError(f"base={where!r} has learned positions for a {base.grid} token grid, which have no "
                         f"entry for {frames} x {size} x {size} latents; valid: a base with positions='rope3d'")
    config.update(sample_frames=frames, sample_size=size, **positions)
    if config["rope_scaling"] == "interpolate" and "rope_base" not in positions:
        config["rope_base"] = tuple(base.rope_base or base.grid)
    if config.get("rope_base") is not None:
        config["rope_base"] = tuple(config["rope_base"])
    return config
