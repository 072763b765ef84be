"""Real images: `hirune invert` (image -> noise -> image, PSNR) and `hirune edit`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import _positive_int
from .runs import _add_guidance_options, _guided


def _add_invert(sub) -> None:
    p = sub.add_parser("invert", help="DDIM-invert an image to its noise and reconstruct it (PSNR)")
    p.add_argument("run")
    p.add_argument("image", help="an image file, or test:N / train:N from the run's dataset")
    p.add_argument("--class", dest="label", type=int, default=None,
                   help="condition (class-conditional runs; default: the image's own label where known)")
    p.add_argument("--prompt", default=None,
                   help="condition (text runs; default: test:N / train:N's caption, written as in training)")
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--plain", action="store_true", help="plain inversion instead of the exact fixed-point one")
    p.add_argument("--reference", action="store_true",
                   help="video runs: reconstruct with reference attention to the inversion's trajectory")
    p.add_argument("--out", default="inversion.png",
                   help="PNG: original | noise | reconstruction (+ .npz noise); video runs: .gif, .mp4 or .png")
    _add_guidance_options(p)
    p.set_defaults(func=cmd_invert)


def cmd_invert(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..inference.editing import caption_for, invert, load_image_for, regenerate
    from ..metrics import psnr
    from ..training.loading import load
    from ..viz import image_grid

    run = load(args.run)
    if run.name == "video":
        from .video_control import invert_clip

        return invert_clip(run, args)
    if args.reference:
        raise ValueError("--reference is valid for video runs only (reference attention of a video transformer)")
    x, known = load_image_for(run, args.image)
    conditional = run.config.class_conditional
    if args.label is not None and not (conditional or args.guidance == "classifier"):
        raise ValueError("--class needs a class-conditional run (class_conditional=true) or classifier guidance")
    label = args.label if args.label is not None else known
    labels = torch.tensor([label]) if (conditional or args.guidance == "classifier") and label is not None else None
    if conditional and labels is None:
        raise ValueError("a class-conditional run needs --class for an image without a known label")
    prompts = None
    if run.text is not None:
        prompt = args.prompt if args.prompt is not None else caption_for(run, args.image)
        if prompt is None:
            raise ValueError("a text run needs --prompt for an image that is not test:N / train:N")
        prompts = [prompt]
    elif args.prompt is not None:
        raise ValueError("--prompt needs a text-conditioned run (text_encoder=tiny|minilm|tiny+minilm)")
    d = _guided(run, args)
    inv = invert(run, x, labels=labels, prompts=prompts, denoiser=d, steps=args.steps, exact=not args.plain)
    back = regenerate(run, inv.x, labels=labels, prompts=prompts, denoiser=d, steps=args.steps)
    out = Path(args.out)
    image_grid(torch.cat([x, _noise_view(inv.x, x), back.x]), out, nrow=3)
    np.savez(out.with_suffix(".npz"), noise=inv.x.numpy(), image=x.numpy(), reconstruction=back.x.numpy())
    result = {"psnr_db": float(psnr(back.x, x)[0]), "relative_error": float((back.x - x).norm() / x.norm()),
              "nfe": inv.nfe + back.nfe, "exact": not args.plain, "steps": args.steps, "out": str(out)}
    if prompts is not None:
        result["prompt"] = prompts[0]
    if run.first_stage is not None:  # the ceiling: the autoencoder's own reconstruction
        result["autoencoder_psnr_db"] = float(psnr(run.decode(run.encode(x)), x)[0])
    print(json.dumps(result))
    return 0


def _class_number(value, flag: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    if not str(value).lstrip("-").isdigit():
        raise ValueError(f"{flag} {value!r}: this run edits by class, give a class number (prompts need a "
                         "text-conditioned run)")
    return int(value)


def _noise_view(noise, image):
    """The noise as a picture beside the image: clamped to 3 sigma; a latent's channels are
    averaged and enlarged (nearest) to the image's size."""
    import torch.nn.functional as F

    view = noise.clamp(-3, 3) / 3
    if view.shape[1:] != image.shape[1:]:
        view = F.interpolate(view.mean(1, keepdim=True), size=image.shape[-2:], mode="nearest")
        view = view.expand(-1, image.shape[1], -1, -1)
    return view


def _add_edit(sub) -> None:
    p = sub.add_parser("edit", help="edit an image's class or caption: invert under --from, resample under --to")
    p.add_argument("run", help="a class-conditional or text-conditioned run")
    p.add_argument("image", help="an image file, or test:N / train:N from the run's dataset")
    p.add_argument("--from", dest="source", default=None,
                   help="its class, or for text runs its caption (default: its label / its training-style caption)")
    p.add_argument("--to", dest="target", required=True, help="the class, or for text runs the prompt, to edit to")
    p.add_argument("--scale", type=float, default=1.0, help="classifier-free guidance scale on both passes")
    p.add_argument("--strength", type=float, default=1.0,
                   help="fraction of the noise range to invert (SDEdit style; < 1 keeps more of the image)")
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--out", default="edit.png", help="PNG: original | edit; video runs: .gif, .mp4 or .png")
    v = p.add_argument_group("video runs (DDIM inversion of video)")
    v.add_argument("--plain", action="store_true", help="plain inversion instead of the exact fixed-point one")
    v.add_argument("--no-reference", action="store_true",
                   help="resample without reference attention to the inversion's trajectory")
    p.set_defaults(func=cmd_edit)


def cmd_edit(args: argparse.Namespace) -> int:
    import torch

    from ..inference.editing import caption_for, edit, load_image_for
    from ..metrics import psnr
    from ..training.loading import load
    from ..viz import image_grid

    run = load(args.run)
    if run.name == "video":
        from .video_control import edit_clip

        return edit_clip(run, args)
    if args.plain or args.no_reference:
        raise ValueError("--plain and --no-reference are valid for video runs only; image edits invert exactly")
    x, known = load_image_for(run, args.image)
    if run.text is not None:   # prompts
        source = args.source if args.source is not None else caption_for(run, args.image)
        target = args.target
    else:                      # class numbers
        source = args.source if args.source is not None else known
        source, target = (_class_number(v, name) for v, name in ((source, "--from"), (args.target, "--to")))
    if source is None:
        raise ValueError("--from is needed for an image without a known label")
    edited, _ = edit(run, x, source, target, scale=args.scale, steps=args.steps, strength=args.strength)
    image_grid(torch.cat([x, edited]), args.out, nrow=2)
    result = {"from": source, "to": target, "psnr_to_original_db": float(psnr(edited, x)[0]), "out": args.out}
    from ..metrics.evaluator import EVALUATED, load_evaluator

    if run.data.name in EVALUATED:
        with torch.no_grad():
            result["evaluator_class"] = int(load_evaluator(run.data.name)(edited).argmax(1)[0])
    print(json.dumps(result))
    return 0

