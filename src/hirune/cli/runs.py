"""Trained runs: `hirune train | sample | eval | export`, with guidance options (and, for
runs that sample image tokens, top-k / top-p, priming and CLIP reranking)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .common import CLIError, _count, _positive_int, _size, _size_pair


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a preset (default: the main job), or fine-tune a run",
                       description="hirune train [PRESET] [key=value ...]; `hirune presets` lists "
                                   "the presets; every shared TrainConfig field and every setting of the "
                                   "preset's family (family=... to change it) can be overridden.  "
                                   "hirune train lora BASE_RUN [key=value ...]: LoRA adapters on a trained "
                                   "diffusion run (its config, base=BASE_RUN, adapter=lora; out defaults to "
                                   "runs/<base>-lora; lora_rank, lora_alpha, lora_targets, lora_dropout, "
                                   "dataset=... for a new domain); hirune train finetune BASE_RUN: the same with "
                                   "every weight trained; hirune train textual-inversion BASE_RUN "
                                   "instance=digit:7 initializer=seven [placeholder=<s*>]: a new word's "
                                   "embedding alone (out: runs/<base>-ti); hirune train dreambooth BASE_RUN "
                                   "[instance=crossbar-sevens] [prior_weight=1] [adapter=lora]: DreamBooth on a "
                                   "text-to-image run.")
    p.add_argument("items", nargs="*",
                   metavar="PRESET | lora|finetune|textual-inversion|dreambooth BASE_RUN | key=value")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="train with N processes on this machine: runs `torchrun --standalone "
                        "--nproc-per-node N -m hirune train ...` (one per GPU; gloo on CPUs); "
                        "strategy=ddp|zero1|zero2|zero3 picks how they share the work")
    p.set_defaults(func=cmd_train)


def _launch(nproc: int, items: list[str]) -> int:
    """Re-run this command under torchrun (PyTorch's launcher) with nproc processes."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "hirune", "train", *items]
    print("launching: " + " ".join(cmd[2:]), flush=True)
    return subprocess.call(cmd)


def cmd_train(args: argparse.Namespace) -> int:
    from ..distributed import runtime
    from ..training.loop import train
    from ..training.presets import FINETUNE, finetune_config, parse_preset_args, preset_config
    from ..training.stages import earlier_stages

    finetune = bool(args.items) and args.items[0] in FINETUNE
    if finetune:  # hirune train lora|finetune|dreambooth BASE_RUN [key=value ...]
        if len(args.items) < 2 or "=" in args.items[1]:
            raise CLIError(f"hirune train {args.items[0]} needs the base run: hirune train {args.items[0]} BASE_RUN "
                           "[key=value ...]")
        from ..training.config import parse_overrides

        preset = f"{args.items[0]} of {args.items[1]}"
        cfg = finetune_config(args.items[0], args.items[1], parse_overrides(args.items[2:], "diffusion"))
    else:
        preset, overrides = parse_preset_args(args.items)
        cfg = preset_config(preset, overrides)
    if args.nproc < 0:
        raise CLIError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc and args.nproc % cfg.tp:
        raise CLIError(f"tp={cfg.tp} does not divide --nproc {args.nproc}: the processes form a dp x tp grid; "
                       f"valid --nproc: multiples of {cfg.tp}")
    # the runs a preset builds on, trained first when missing, in this one process (not under torchrun,
    # nor for a fine-tune's base: there the trainer's error names what is missing and how to make it)
    stages = [] if "WORLD_SIZE" in os.environ or finetune else earlier_stages(cfg)
    for i, (name, stage) in enumerate(stages, 1):
        print(f"stage {i}/{len(stages) + 1}: training {name} -> {stage.out} (this run builds on it)")
        train(stage)
    if args.nproc and "WORLD_SIZE" not in os.environ:
        return _launch(args.nproc, args.items)
    rank, _, _ = runtime.from_env()
    main = rank == 0
    if main:
        print(("" if not stages else f"stage {len(stages) + 1}/{len(stages) + 1}: ")
              + f"training {preset or 'the default preset'} -> {cfg.out}")
    finished = False
    try:
        run = train(cfg)
        finished = True
    finally:  # leave the process group, also when the run stops with an error
        runtime.teardown(finished)
    if not main:
        return 0
    previews = Path(cfg.out) / "samples"
    print(f"done at step {run.step}; checkpoints in {cfg.out}/checkpoints"
          + (f", samples in {previews}" if previews.is_dir() else ""))
    if cfg.eval_samples:
        from ..training.loading import load

        metrics = load(cfg.out).evaluate(cfg.eval_samples)
        (Path(cfg.out) / "eval.json").write_text(json.dumps(metrics, indent=1))
        print(json.dumps(metrics))
    return 0



def _add_guidance_options(p) -> None:
    g = p.add_argument_group("guidance (scale s: 1 = conditional, 0 = unconditional, > 1 sharper)")
    g.add_argument("--guidance", choices=("none", "cfg", "classifier"), default="none")
    g.add_argument("--scale", type=float, default=1.0, help="guidance scale s")
    g.add_argument("--classifier", default=None, metavar="RUN", help="noise-aware classifier run (classifier guidance)")
    g.add_argument("--rescale", type=float, default=0.0, help="cfg guidance rescale phi (Lin et al.; 0.7 typical)")
    g.add_argument("--interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="cfg only for noise levels sigma/alpha in (LO, HI]")
    g.add_argument("--threshold", choices=("none", "static", "dynamic"), default=None,
                   help="x0 thresholding after guidance (Imagen): none, static clip to [-1, 1], or dynamic "
                        "(per-sample percentile of |x0|); default: the run's clip_x0 setting; pixel runs only")
    g.add_argument("--percentile", type=float, default=None, metavar="P",
                   help="dynamic thresholding's percentile p in (0, 1], default 0.995")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample from a trained run (optionally guided)")
    p.add_argument("run", help="run directory (or checkpoint folder)")
    p.add_argument("--sampler", default=None, help="default: the run's preview sampler")
    p.add_argument("--steps", type=_positive_int, default=None, help="default: the run's sample_steps")
    p.add_argument("--spacing", default=None)
    p.add_argument("--n", type=_positive_int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="label", type=int, default=None, help="class label (conditional or guided)")
    p.add_argument("--class-grid", action="store_true", help="one row per class, n // classes samples each")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="normalizing flows: z ~ N(0, T^2 I); dalle: the softmax temperature of each token")
    p.add_argument("--prompt", default=None, help="text-conditioned runs: the caption, e.g. 'a thick seven'")
    p.add_argument("--motion", default=None, help="video runs: the motion of the prompts drawn in turn, "
                   "e.g. 'moving left' (with --class: that digit)")
    p.add_argument("--gap", type=_positive_int, default=None,
                   help="cogvideo runs: the frames between key frames (1, 2 or 4; default 4)")
    p.add_argument("--interpolator", default=None, metavar="RUN",
                   help="cogvideo runs: an interpolation run that fills in the key frames recursively to gap 1")
    p.add_argument("--size", type=_size, default=None, metavar="HxW",
                   help="a run with aspect-ratio buckets (buckets=true): the samples' height x width, one of its "
                        "buckets (default: the first)")
    p.add_argument("--compile", action="store_true",
                   help="compile the network for the batch's shape first (torch.compile; on a GPU with CUDA "
                        "graphs): the first chunk pays the compilation, every step after runs faster")
    p.add_argument("--out", default="samples.png", help=".png grid, .npz arrays or .gif trajectory; video runs: "
                   ".gif / .mp4 (the clips playing in a grid) or .png (one frame strip per clip)")
    a = p.add_argument_group("LoRA adapters (diffusion runs; RUN is their base run, or an adapter run)")
    a.add_argument("--adapter", action="append", default=[], metavar="A[:W]",
                   help="an adapter run (or adapter folder) trained on RUN's base, at weight W (default 1); "
                        "repeat it for several (their updates add up)")
    a.add_argument("--merge", action="store_true", help="merge the adapters into the weights before sampling")
    p.add_argument("--embedding", default=None, metavar="FILE",
                   help="a learned word (textual inversion: FILE or its run) for this run's text encoder; "
                        "use its placeholder in --prompt, e.g. 'an image of <s*>'")
    x = p.add_argument_group("SDXL (diffusion runs)")
    x.add_argument("--refiner", default=None, metavar="RUN",
                   help="a refiner run (train_until < 1) that continues the sampling below the switch")
    x.add_argument("--switch", type=float, default=None, metavar="F",
                   help="with --refiner: the hand-over, a fraction of the time range (default: the refiner's "
                        "train_until)")
    x.add_argument("--original-size", type=_size_pair, default=None, metavar="H[,W]",
                   help="micro-conditioned runs: the original size asked for (default: the image's size)")
    x.add_argument("--crop", type=_size_pair, default=None, metavar="TOP,LEFT",
                   help="micro-conditioned runs: the crop offsets asked for (default 0,0: uncropped)")
    _add_guidance_options(p)
    t = p.add_argument_group("image tokens (dalle runs; --scale S != 1 is classifier-free guidance on the logits)")
    t.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely codes (0: all)")
    t.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus: the likeliest codes up to mass P")
    t.add_argument("--prime", default=None, metavar="IMAGE",
                   help="complete this image (test:N, train:N or an image file) from its first --rows code rows")
    t.add_argument("--rows", type=_positive_int, default=None, metavar="K", help="code rows of --prime kept")
    r = p.add_argument_group("reranking (any run that takes prompts)")
    r.add_argument("--rerank", type=_positive_int, default=None, metavar="N",
                   help="draw N candidates per sample and keep the one the --clip run scores highest")
    r.add_argument("--clip", default=None, metavar="RUN", help="a CLIP run on the same dataset (with --rerank)")
    p.set_defaults(func=cmd_sample)


_TOKEN_FLAGS = {"top_k": "--top-k", "top_p": "--top-p", "prime": "--prime", "rows": "--rows"}


def _token_options(run, args) -> dict:
    """The image-token options of `hirune sample` for a run that samples tokens (dalle);
    refused by name for any other run."""
    given = [flag for key, flag in _TOKEN_FLAGS.items() if getattr(args, key, None) is not None]
    if not getattr(run, "samples_tokens", False):
        if given:
            raise CLIError(f"{', '.join(given)} apply to runs that sample image tokens (dalle), not a {run.name} run")
        return {}
    if (args.prime is None) != (args.rows is None):
        raise CLIError("--prime IMAGE and --rows K go together")
    options = {"top_k": args.top_k, "top_p": args.top_p, **_scale_guidance(run, args)}
    if args.prime is not None:
        from ..inference.editing import read_image

        options.update(prime=read_image(run.data, args.prime)[0], rows=args.rows)
    return options


def _scale_guidance(run, args) -> dict:
    """The guidance of a run guided by a bare scale (dalle's logits, a prior's embeddings):
    --scale S alone (classifier-free guidance); the other guidance options are refused."""
    if args.guidance == "classifier" or args.rescale or args.interval:
        raise CLIError(f"a {run.name} run is guided by --scale S alone (classifier-free guidance)")
    if args.threshold is not None or args.percentile is not None:
        raise CLIError(f"--threshold / --percentile threshold a diffusion run's x0 estimate; not valid for a "
                       f"{run.name} run")
    return {"scale": args.scale}


def _reranked(run, args, options: dict):
    """--rerank N --clip RUN: N candidates per sample, the best by the CLIP run's similarity."""
    import torch

    from ..data.captions import caption
    from ..inference.generate import generate
    from ..inference.rerank import load_scorer, sample_reranked
    from ..sampling import SampleOutput

    scorer = load_scorer(args.clip, run.data.name)
    labels = None if args.prompt is not None else torch.arange(args.n) % 10
    prompts = [args.prompt] * args.n if args.prompt is not None else [caption(int(k)) for k in labels]
    nfe = []

    def candidates(texts):
        out, _ = generate(run, len(texts), args.sampler, args.steps, args.spacing, args.seed, prompts=texts, **options)
        nfe.append(out.nfe)
        return out.x

    best, _ = sample_reranked(candidates, prompts, args.rerank, scorer)
    return SampleOutput(best, nfe[0]), labels


def _guided(run, args):
    """The run's denoiser under the guidance and thresholding named by the arguments (None:
    the run's own)."""
    from ..inference.generate import guide

    threshold, percentile = getattr(args, "threshold", None), getattr(args, "percentile", None)
    if percentile is not None and threshold != "dynamic":
        raise CLIError(f"--percentile {percentile} goes with --threshold dynamic")
    if threshold is not None and not hasattr(run, "guide"):
        raise CLIError(f"--threshold applies to diffusion and flow-matching runs; this is a {run.name} run")
    return guide(run, getattr(args, "guidance", "none"), getattr(args, "scale", 1.0),
                 classifier=getattr(args, "classifier", None),
                 rescale=getattr(args, "rescale", 0.0),
                 interval=tuple(args.interval) if getattr(args, "interval", None) else None,
                 threshold=threshold, percentile=0.995 if percentile is None else percentile)


def _sdxl_options(run, args, denoiser) -> dict:
    """generate's keywords for a refiner (the denoiser handed over at the switch) and the
    micro-conditions (original size, crop)."""
    from ..training.loading import load

    out = {}
    if args.switch is not None and not args.refiner:
        raise CLIError("--switch goes with --refiner RUN")
    if args.refiner:
        from ..inference.refine import refined

        refiner = load(args.refiner)
        out["denoiser"] = refined(run, refiner, args.switch, base_denoiser=denoiser,
                                  refiner_denoiser=_guided(refiner, args))
    if args.original_size is not None:
        size = args.original_size
        out["original_size"] = size[0] if len(size) == 1 else size
    if args.crop is not None:
        if len(args.crop) != 2:
            raise CLIError(f"--crop {args.crop} is not valid; valid: TOP,LEFT")
        out["crop"] = args.crop
    return out


def _adapter_spec(text: str) -> tuple[str, float]:
    """--adapter A or A:W -> (A, W); a path that exists is taken whole (W = 1)."""
    import math

    if Path(text).exists() or ":" not in text:
        return text, 1.0
    path, weight = text.rsplit(":", 1)
    try:
        value = float(weight)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CLIError(f"--adapter {text!r} is not valid; valid: A or A:W with a finite number W after the last ':' "
                       "(e.g. runs/thick-lora:0.8), where A is an adapter run or folder")
    return path, value


def _use_adapters(run, args) -> None:
    """--adapter / --merge: the run samples through the adapters (diffusion runs)."""
    if not (args.adapter or args.merge):
        return
    if not hasattr(run, "use_adapters"):
        raise CLIError(f"--adapter and --merge apply to diffusion runs, not a {run.name} run")
    specs = [_adapter_spec(text) for text in args.adapter]
    weights = run.use_adapters(specs, merge=args.merge)
    if args.merge and not weights:
        raise CLIError("--merge merges adapters: give --adapter A, or sample an adapter run")
    print("adapters: " + ", ".join(f"{name} at {w:g}" for name, w in weights.items())
          + (" (merged)" if args.merge else ""))


def _save_npz(out_path: Path, out, labels) -> None:
    """--out X.npz: the samples, and their labels where there are some."""
    import numpy as np

    np.savez(out_path, samples=out.x.numpy(), **({"labels": labels.numpy()} if labels is not None else {}))


def _sample_video(run, args, options: dict, out_path: Path) -> int:
    """hirune sample on a video run: clips of the prompt (or of the digits and motions in
    turn), written as a GIF or MP4 grid, a PNG frame strip per clip, or .npz arrays."""
    from ..inference.generate import generate
    from ..video_io import frame_strip, write_gif, write_mp4

    options.pop("temperature")
    if args.rerank is not None or args.class_grid or args.size is not None:
        raise CLIError("--rerank, --class-grid and --size do not apply to video runs")
    if run.name == "cogvideo":  # key frames at a gap, filled in by an interpolation run
        from ..training.loading import load

        options.update(gap=args.gap, interpolator=load(args.interpolator) if args.interpolator else None)
    elif args.gap is not None or args.interpolator is not None:
        raise CLIError(f"--gap and --interpolator apply to cogvideo runs, not a {run.name} run")
    out, labels = generate(run, args.n, args.sampler, args.steps, args.spacing, args.seed, label=args.label,
                           motion=args.motion, prompt=args.prompt, **options)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".npz":
        _save_npz(out_path, out, labels)
    else:
        {".gif": write_gif, ".mp4": write_mp4, ".png": frame_strip}[out_path.suffix](out.x, out_path)
    print(f"wrote {out_path} ({out.nfe} network evaluations)")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ..inference.generate import generate
    from ..training.loading import load
    from ..viz import grid_gif, image_grid, scatter_grid, trajectory_gif

    out_path = Path(args.out)
    if out_path.suffix not in (".png", ".npz", ".gif", ".mp4"):
        raise CLIError(f"--out must end in .png, .npz, .gif or .mp4 (video runs), got {args.out!r}")
    if (args.rerank is None) != (args.clip is None):
        raise CLIError("--rerank N needs --clip RUN (a CLIP run that scores the candidates), and --clip goes "
                       "with --rerank")
    run = load(args.run)
    _use_adapters(run, args)
    if args.embedding:
        if not hasattr(run, "use_embedding"):
            raise CLIError(f"--embedding applies to text-conditioned diffusion runs, not a {run.name} run")
        print(f"learned word: {run.use_embedding(args.embedding)}")
    if args.compile:
        from ..inference.compiled import compile_network

        try:
            compile_network(run)
        except ValueError as e:
            raise CLIError(str(e)) from None
    options = _token_options(run, args)
    if not options:
        options = {"denoiser": _guided(run, args), "guided_labels": args.guidance == "classifier"}
        options.update(_sdxl_options(run, args, options["denoiser"]))
    elif args.refiner or args.original_size or args.crop:
        raise CLIError("--refiner, --original-size and --crop apply to diffusion runs")
    options["temperature"] = args.temperature
    if run.data.kind == "video":
        return _sample_video(run, args, options, out_path)
    if args.motion is not None or out_path.suffix == ".mp4":
        raise CLIError(f"--motion and .mp4 apply to video runs, not a run on {run.data.name}")
    if args.size is not None:
        if not hasattr(getattr(run, "config", None), "buckets"):
            raise CLIError(f"--size applies to diffusion runs with aspect-ratio buckets (buckets=true), not a "
                           f"{run.name} run")
        options["size"] = args.size
    if args.rerank is not None:
        if args.label is not None or args.class_grid or out_path.suffix == ".gif":
            raise CLIError("--rerank draws prompts (--prompt, or the digits in turn); not with --class, "
                           "--class-grid or a .gif")
        out, labels = _reranked(run, args, options)
    else:
        out, labels = generate(run, args.n, args.sampler, args.steps, args.spacing, args.seed, label=args.label,
                               trajectory=out_path.suffix == ".gif", per_class=args.class_grid,
                               prompt=args.prompt, **options)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".npz":
        _save_npz(out_path, out, labels)
    elif out_path.suffix == ".gif":
        if run.data.kind == "toy":
            trajectory_gif(out.trajectory, out_path)
        else:  # the grids along the trajectory (it ends at the samples)
            grid_gif(out.trajectory, out_path)
    elif run.data.kind == "image":
        image_grid(out.x, out_path, nrow=max(1, args.n // run.data.num_classes) if args.class_grid else None)
    else:
        from ..data import load_dataset

        name = args.sampler or getattr(run.config, "sampler", "flow inverse")
        scatter_grid([(f"{name}, {out.nfe} NFE", out.x)], out_path, truth=load_dataset(run.data.name).data[:2000])
    print(f"wrote {out_path} ({out.nfe} network evaluations)")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="metrics of a trained run, as one JSON line")
    p.add_argument("run")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="number of samples, default 1000 (toys: at most the test split, whose first n points "
                        "they are compared with); autoencoders: test images reconstructed, default all")
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=_positive_int, default=None, help="default: the run's sample_steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nll", type=_count, default=0, metavar="N",
                   help="also the negative log-likelihood of the first N test examples (at most the test "
                        "split; a larger N is refused, saying how many there are): exact for flows, through "
                        "the probability-flow ODE otherwise (exact divergence on toys, Hutchinson on "
                        "images); images dequantized, in nats and bits/dim")
    p.add_argument("--text-accuracy", type=_count, default=0, metavar="N",
                   help="text-conditioned runs: N samples per caption phrasing (training and held-out), "
                        "scored by whether the evaluator sees the digit the caption names")
    p.add_argument("--denoising-error", type=_count, default=0, metavar="N",
                   help="also the unguided denoiser's x0 error (MSE per element) on N test examples at "
                        "nine noise levels, x0_mse_t<t>: where a model loses")
    _add_guidance_options(p)
    p.set_defaults(func=cmd_eval)



def cmd_eval(args: argparse.Namespace) -> int:
    from ..training.loading import load

    run = load(args.run)
    if run.guided_by_scale:  # dalle (its logits), prior (its embeddings): classifier-free guidance at --scale
        guidance = _scale_guidance(run, args)
    else:
        guidance = {"denoiser": _guided(run, args), "guided_labels": args.guidance == "classifier"}
    metrics = {"run": str(args.run), **run.evaluate(
        args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, nll=args.nll,
        text_accuracy=args.text_accuracy, denoising_error=args.denoising_error, **guidance)}
    if args.guidance != "none":
        metrics.update({"guidance": args.guidance, "scale": args.scale})
    if args.threshold is not None:
        metrics["threshold"] = args.threshold + (f" {args.percentile}" if args.percentile is not None else "")
    print(json.dumps(metrics))
    return 0



def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a run's weights as one safetensors file (hirune sample reads it)",
                       description="Write the network of a run (whole-state or sharded checkpoint) to a "
                                   "single safetensors file with its config in the header.")
    p.add_argument("run", help="run directory (or checkpoint folder)")
    p.add_argument("--out", default=None, help="default: RUN/weights.safetensors (RUN/diffusers for diffusers)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="the EMA weights (default) or the raw training weights")
    p.add_argument("--format", choices=("safetensors", "diffusers"), default="safetensors",
                   help="one hirune safetensors file (default), or a folder diffusers' from_pretrained loads "
                        "(a DiT on a ddpm process, with its scheduler and DiTPipeline; a KL autoencoder)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..training.diffusers_export import export_diffusers
    from ..training.export import export_weights
    from ..training.loading import run_directory

    use_ema = args.weights == "ema"
    if args.format == "diffusers":  # (a dispatch in training.export would close an import cycle through loading)
        out = export_diffusers(args.run, args.out or run_directory(args.run) / "diffusers", use_ema)
    else:
        out = export_weights(args.run, args.out, use_ema)
    size = out.stat().st_size if out.is_file() else sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {args.weights} weights, {args.format})")
    return 0
