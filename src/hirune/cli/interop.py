"""`hirune import DIR --out RUN`: a diffusers model folder as a hirune run
(`hirune.training.diffusers_import`); `hirune export RUN --format diffusers` is the way back
(in runs.py)."""

from __future__ import annotations

import argparse


def _add_import(sub) -> None:
    from ..training.diffusers_import import SUPPORTED_CLASSES

    p = sub.add_parser("import", help="a diffusers model folder (UNet2DModel, DiTTransformer2DModel) as a hirune run",
                       description="Read a diffusers folder saved with save_pretrained (a model folder with "
                                   "config.json, or a pipeline folder with model_index.json) and its scheduler "
                                   "config, offline, and write a hirune run directory whose denoiser every "
                                   f"hirune sampler and inversion takes.  Supported: {', '.join(SUPPORTED_CLASSES)}.")
    p.add_argument("folder", help="the diffusers folder (the scheduler: FOLDER/scheduler, ../scheduler or FOLDER)")
    p.add_argument("--out", required=True, help="the run directory to write (new or empty)")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from ..training.diffusers_import import import_diffusers, load_imported

    out = import_diffusers(args.folder, args.out)
    run = load_imported(out)
    print(f"wrote {out}: a diffusers {run.model.kind}, {run.denoiser.prediction} prediction over "
          f"{run.process.T} steps, samples {tuple(run.sample_shape)}")
    return 0
