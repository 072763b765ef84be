"""`hirune bench train`: training speed beside diffusers (see `hirune.bench`)."""

from __future__ import annotations

import argparse
import json

from .common import _count, _positive_int


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: `hirune bench train` (training images/s vs diffusers)")
    bench = p.add_subparsers(dest="bench", metavar="BENCH")
    bench.required = True
    t = bench.add_parser("train", help="images/s of a preset's training step, beside diffusers' twin UNet",
                         description="hirune bench train [PRESET] [key=value ...]: times the preset's "
                                     "whole optimizer step (objective, backward, clipping, AdamW, EMA) and "
                                     "the same step of diffusers' UNet2DModel built to the same "
                                     "architecture, taking turns.  Default preset: vpred-mnist5k (the pixel "
                                     "UNet; the main job's latent UNet reads an autoencoder run).")
    t.add_argument("items", nargs="*", metavar="PRESET | key=value")
    t.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the preset's)")
    t.add_argument("--steps", type=_positive_int, default=15, help="timed steps per contestant")
    t.add_argument("--warmup", type=_count, default=3, help="untimed steps first")
    t.add_argument("--no-peer", dest="peer", action="store_false", help="time hirune only")
    t.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    t.set_defaults(func=cmd_bench_train)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from ..training.speed import bench_train, format_result
    from ..training.presets import parse_preset_args

    preset, overrides = parse_preset_args(args.items)
    result = bench_train(preset, overrides, batch=args.batch, steps=args.steps, warmup=args.warmup, peer=args.peer)
    print(json.dumps(result) if args.json else format_result(result))
    return 0


