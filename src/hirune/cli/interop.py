"""`hirune import DIR --out RUN`: a diffusers model folder as a hirune run
(`hirune.training.diffusers_import`); `hirune export RUN --format diffusers` is the way back
(in runs.py)."""

from __future__ import annotations

import argparse


def _add_import(sub) -> None:
    from ..training.diffusers_import import SUPPORTED_CLASSES

    p = sub.add_parser("import", help="a diffusers model folder (UNet2DModel, DiTTransformer2DModel, AutoencoderKL) "
                                      "as a hirune run",
                       description="Read a diffusers folder saved with save_pretrained (a model folder with "
                                   "config.json, or a pipeline folder with model_index.json) and its scheduler "
                                   "config, offline, and write an ordinary hirune run directory: hirune sample, "
                                   "invert, edit, eval and load read it as any run (an AutoencoderKL: an "
                                   "autoencoder run, a latent diffusion run's autoencoder=RUN).  "
                                   f"Supported: {', '.join(SUPPORTED_CLASSES)}.")
    p.add_argument("folder", help="the diffusers folder (the scheduler: FOLDER/scheduler, ../scheduler or FOLDER)")
    p.add_argument("--out", required=True, help="the run directory to write (new or empty)")
    p.add_argument("--dataset", default=None,
                   help="the dataset of the network's images (a name or path; its shape must be the network's): "
                        "for eval, nll, invert test:N and latent diffusion on it; default: none")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from ..training.diffusers_import import import_diffusers
    from ..training.loading import load

    out = import_diffusers(args.folder, args.out, args.dataset)
    run = load(out)
    kind = run.model.config.class_name if run.cfg.model == "diffusers" else "AutoencoderKL"
    what = (f"{run.denoiser.prediction} prediction over {run.process.T} steps" if run.name == "diffusion"
            else f"latent scale factor {run.latent_stats['scale_factor']:.6g}")
    print(f"wrote {out}: a diffusers {kind}, now a hirune {run.name} run: {what}, on {run.data.name} "
          f"{tuple(run.data.shape)}")
    return 0
