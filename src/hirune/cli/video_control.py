"""`hirune invert` and `hirune edit` on a video run: DDIM inversion of a clip, with reference
attention to the inversion's trajectory (`inference.video_inversion`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _write(clips, out: str) -> None:
    """The clips one above the other: .gif / .mp4 play them, .png is a frame strip."""
    from ..video_io import frame_strip, write_gif, write_mp4

    path = Path(out)
    writers = {".gif": write_gif, ".mp4": write_mp4, ".png": frame_strip}
    if path.suffix not in writers:
        raise ValueError(f"--out {out!r} is not valid for a video run; valid: a .gif, .mp4 or .png path")
    if path.suffix == ".png":
        frame_strip(clips, path, scale=2)
    else:
        writers[path.suffix](clips, path, nrow=1, scale=4)


def _clip(run, args):
    from ..inference import video_inversion as V

    if getattr(args, "label", None) is not None:
        raise ValueError("--class is not valid for a video run; valid: --prompt / --from (its caption)")
    return V.load_clip(run, args.image)


def invert_clip(run, args: argparse.Namespace) -> int:
    """hirune invert RUN test:N: the clip, inverted and sampled back under its caption."""
    import torch

    from ..inference import video_inversion as V

    clip, caption = _clip(run, args)
    prompt = [args.prompt or caption]
    if args.guidance not in ("none", "cfg"):
        raise ValueError(f"--guidance {args.guidance} is not valid for a video run; valid: none, cfg")
    scale = args.scale if args.guidance == "cfg" else 1.0
    inversion = V.invert(run, clip, prompt, steps=args.steps, exact=not args.plain)
    back, _ = V.reconstruct(run, inversion, prompt, scale=scale, reference=args.reference)
    _write(torch.cat([clip, back]), args.out)
    with torch.no_grad():  # the autoencoder alone: the clip's latents, as the inversion encoded them, decoded
        ceiling = run.decode(inversion.latents).clamp(-1, 1)
    print(json.dumps({"psnr_db": float(V.psnr(back, clip)[0]), "autoencoder_psnr_db": float(V.psnr(ceiling, clip)[0]),
                      "prompt": prompt[0], "exact": not args.plain, "reference": args.reference, "scale": scale,
                      "steps": args.steps, "out": args.out}))
    return 0


def edit_clip(run, args: argparse.Namespace) -> int:
    """hirune edit RUN test:N --to PROMPT: the clip inverted under its caption, resampled
    under PROMPT (reference attention by default); the evaluator's class of each frame, the
    direction of the motion, and PSNR outside the original digit."""
    import torch

    from ..data.moving import DIRECTIONS
    from ..evaluation.video import frame_classes, motion_direction
    from ..inference import video_inversion as V

    clip, caption = _clip(run, args)
    source = args.source or caption
    edited = V.edit(run, clip, [source], [args.target], scale=args.scale, steps=args.steps, exact=not args.plain,
                    reference=not args.no_reference)
    _write(torch.cat([clip, edited]), args.out)
    classes, _ = frame_classes(edited)
    direction = int(motion_direction(edited)[0])
    result = {"from": source, "to": args.target, "frame_classes": classes[0].tolist(),
              "direction": DIRECTIONS[direction] if direction >= 0 else "none",
              "psnr_outside_digit_db": float(V.psnr(edited, clip, V.outside_digit(clip))[0]), "out": args.out}
    print(json.dumps(result))
    return 0
