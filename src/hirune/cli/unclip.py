"""`hirune unclip MODE ...`: unCLIP's pipeline and what its decoder does with real images
(`inference/unclip.py`), each mode writing one PNG.

    hirune unclip text PRIOR DECODER --prompt "a handwritten seven" [--no-prior]
    hirune unclip variations DECODER --image-index K          (test image K)
    hirune unclip interpolate DECODER --pair I J
    hirune unclip diff DECODER --index K --from "a thin handwritten seven" --to "a thick handwritten seven"
"""

from __future__ import annotations

import argparse
import json

from .common import _positive_int


def _add_unclip(sub) -> None:
    p = sub.add_parser("unclip", help="unCLIP: text -> prior -> decoder; variations, interpolations, text diffs",
                       description="unCLIP (DALL-E 2) over a prior run and a decoder run (clip=RUN) built on the same "
                                   "CLIP run; images of the modes but text are test images of the decoder's dataset.")
    modes = p.add_subparsers(dest="mode", metavar="MODE")
    modes.required = True

    def mode(name: str, help: str, runs: tuple[str, ...]) -> argparse.ArgumentParser:
        m = modes.add_parser(name, help=help)
        for run in runs:
            m.add_argument(run.lower(), metavar=run)
        m.add_argument("--decoder-scale", type=float, default=1.0, help="the decoder's CFG scale (1: none)")
        m.add_argument("--out", default=f"unclip-{name}.png", help="the PNG written")
        m.set_defaults(func=cmd_unclip)
        return m

    m = mode("text", "images of a prompt: the prior's embedding (or --no-prior: CLIP's text embedding) decoded",
             ("PRIOR", "DECODER"))
    m.add_argument("--prompt", required=True)
    m.add_argument("--n", type=_positive_int, default=8)
    m.add_argument("--prior-scale", type=float, default=1.0, help="the prior's CFG scale (1: none)")
    m.add_argument("--best-of", type=_positive_int, default=None, help="prior candidates per image (default: the run's)")
    m.add_argument("--no-prior", action="store_true", help="ablation: decode the prompt's CLIP text embedding")
    m.add_argument("--sampler", default=None, help="the decoder's sampler (default: the run's)")
    m.add_argument("--steps", type=_positive_int, default=None, help="the decoder's steps (default: the run's)")
    m.add_argument("--seed", type=int, default=0)
    m = mode("variations", "one test image's CLIP embedding decoded with other seeds (first: the image)", ("DECODER",))
    m.add_argument("--image-index", type=int, required=True, metavar="K")
    m.add_argument("--n", type=_positive_int, default=8)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--steps", type=_positive_int, default=None, help="the decoder's steps (default: the run's)")
    m = mode("interpolate", "from test image I to J: slerp of the CLIP embeddings, DDIM-inverted noise",
             ("DECODER",))
    m.add_argument("--pair", type=int, nargs=2, required=True, metavar=("I", "J"))
    m.add_argument("--frames", type=int, default=8, help="images along the strip, both ends included (>= 2)")
    m.add_argument("--noise", choices=("slerp", "a"), default="slerp",
                   help="the strip's noise: slerp of the two inverted noises, or image I's throughout")
    m.add_argument("--ddim-steps", type=_positive_int, default=50)
    m = mode("diff", "move test image K's embedding toward the caption change --from -> --to", ("DECODER",))
    m.add_argument("--index", type=int, required=True, metavar="K")
    m.add_argument("--from", dest="source", required=True, metavar="CAPTION")
    m.add_argument("--to", dest="target", required=True, metavar="CAPTION")
    m.add_argument("--amounts", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    m.add_argument("--ddim-steps", type=_positive_int, default=50)


def cmd_unclip(args: argparse.Namespace) -> int:
    import torch

    from ..inference.editing import read_image
    from ..inference.unclip import UnCLIP
    from ..training.loading import load
    from ..viz import image_grid

    decoder = load(args.decoder)
    prior = load(args.prior) if args.mode == "text" else None
    pipe = UnCLIP(prior, decoder)

    def test_image(k: int):
        return read_image(decoder.data, f"test:{k}")[0]

    if args.mode == "text":
        images = pipe.text_to_image([args.prompt] * args.n, prior_scale=args.prior_scale,
                                    decoder_scale=args.decoder_scale, best_of=args.best_of, use_prior=not args.no_prior,
                                    sampler=args.sampler, steps=args.steps, seed=args.seed, progress=True)
        nrow = None
    elif args.mode == "variations":
        x = test_image(args.image_index)
        images = torch.cat([x, pipe.variations(x, args.n, args.seed, args.decoder_scale, steps=args.steps)])
        nrow = args.n + 1
    elif args.mode == "interpolate":
        a, b = (test_image(k) for k in args.pair)
        strip = pipe.interpolate(a, b, args.frames, noise=args.noise, ddim_steps=args.ddim_steps,
                                 decoder_scale=args.decoder_scale)
        images, nrow = torch.cat([a, strip, b]), args.frames + 2
    else:
        x = test_image(args.index)
        edits = pipe.text_diff(x, args.source, args.target, args.amounts, ddim_steps=args.ddim_steps,
                               decoder_scale=args.decoder_scale)
        images, nrow = torch.cat([x, edits]), len(args.amounts) + 1
    print(json.dumps({"mode": args.mode, "images": len(images), "out": str(image_grid(images, args.out, nrow=nrow))}))
    return 0
