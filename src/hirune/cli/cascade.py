"""`hirune cascade BASE SR --prompt P --out FILE.png`: Imagen's cascade, a base run's
low-resolution samples brought to full resolution by a super-resolution run
(`inference/cascade.py`)."""

from __future__ import annotations

import argparse

from .common import _positive_int


def _add_cascade(sub) -> None:
    p = sub.add_parser("cascade", help="text -> base run (e.g. 14x14) -> super-resolution run (28x28)",
                       description="Sample a base run under a prompt, then its super-resolution run from the "
                                   "upsampled, noise-augmented low-resolution samples (Imagen's cascade).")
    p.add_argument("base", metavar="BASE", help="the base run (a text run, e.g. runs/imagen-base-mnist5k)")
    p.add_argument("sr", metavar="SR", help="the super-resolution run (low_res = the base run's image size)")
    p.add_argument("--prompt", required=True, help="the caption, e.g. 'a thick handwritten seven'")
    p.add_argument("--n", type=_positive_int, default=16, help="how many images (default 16)")
    p.add_argument("--aug", type=float, default=0.0, metavar="A",
                   help="noise augmentation level of the low-res images at sampling, in [0, 1] (default 0)")
    p.add_argument("--scale", type=float, default=1.0, help="the base run's CFG scale (default 1: none)")
    p.add_argument("--sr-scale", type=float, default=1.0, help="the SR run's CFG scale (default 1: none)")
    p.add_argument("--sampler", default=None, help="sampler of both stages (default: each run's own)")
    p.add_argument("--steps", type=_positive_int, default=None, help="steps of both stages (default: each run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="FILE.png", help="where the grid of images goes")
    p.set_defaults(func=cmd_cascade)


def cmd_cascade(args: argparse.Namespace) -> int:
    from ..inference.cascade import cascade
    from ..viz import image_grid

    images = cascade(args.base, args.sr, [args.prompt] * args.n, aug_level=args.aug, base_scale=args.scale,
                     sr_scale=args.sr_scale, sampler=args.sampler, steps=args.steps, seed=args.seed, progress=True)
    print(f"wrote {image_grid(images, args.out)}")
    return 0
