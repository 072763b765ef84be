"""The `hirune` command line.

    hirune demo        sample an exact Gaussian-mixture model with several samplers
    hirune samplers    list the samplers
    hirune schedules   list the beta schedules and time-grid spacings
    hirune processes   list the forward processes

Each subcommand is one `_add_<name>(subparsers)` function that declares its arguments and
one `cmd_<name>(args) -> int` function that runs it; adding a command means writing the
pair and listing the first in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class CLIError(Exception):
    """A usage error found after parsing (bad combination of options): exit code 2."""


# --- shared helpers ------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _first_line(obj, width: int = 100) -> str:
    """The first paragraph of obj's docstring on one line, cut to `width` characters."""
    doc = (inspect.getdoc(obj) or "").strip()
    text = " ".join(doc.split("\n\n")[0].split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _is_stochastic(fn) -> bool:
    """Whether a sampler draws fresh noise with its default options (DDIM: only for eta > 0)."""
    from .samplers import STOCHASTIC

    eta = inspect.signature(fn).parameters.get("eta")
    return fn in STOCHASTIC and not (eta is not None and eta.default == 0)


def _print_rows(rows: list[tuple[str, ...]], indent: str = "  ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


# --- hirune demo ---------------------------------------------------------------------------

DEMO_SAMPLERS = ("ddpm", "ddim", "dpmpp_2m", "heun", "euler_maruyama", "pc")

# Steps per sampler when --steps is not given: enough for each to be visibly converged on
# the 2-D mixture (the stochastic ones need many small steps, the high-order ones few).
DEMO_STEPS = {
    "ddpm": 1000, "ddim": 50, "dpmpp_2m": 20, "heun": 25, "midpoint": 25, "euler": 100,
    "rk45": 2, "euler_maruyama": 500, "pc": 200, "annealed_langevin": 10,
}

# Deterministic samplers whose trajectory can make the GIF (the first of them that runs);
# rk45 is left out: it records only its end points.
GIF_SAMPLERS = ("ddim", "dpmpp_2m", "heun", "midpoint", "euler")


def _sampler_list(text: str) -> list[str]:
    from . import SAMPLERS

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown sampler(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid: {', '.join(sorted(SAMPLERS))}")
    return list(dict.fromkeys(names))


def _add_demo(sub) -> None:
    from . import PREDICTIONS, PROCESSES, SPACINGS

    p = sub.add_parser(
        "demo", help="sample an exact Gaussian-mixture model with several samplers",
        description="Sample the 2-D Gaussian mixture of hirune.mixture.demo_mixture through its "
                    "exact denoiser with each sampler, and compare the samples with the truth. "
                    "Writes demo.png, trajectory.gif and metrics.json to --out.")
    p.add_argument("--process", default="ddpm", choices=sorted(PROCESSES),
                   help="forward process (default: ddpm)")
    p.add_argument("--prediction", default=None, choices=PREDICTIONS,
                   help="what the model predicts (default: eps, or velocity for flows)")
    p.add_argument("--samplers", type=_sampler_list, default=list(DEMO_SAMPLERS),
                   metavar="A,B,...", help=f"comma-separated (default: {','.join(DEMO_SAMPLERS)})")
    p.add_argument("--spacing", default=None, choices=SPACINGS,
                   help="time-grid spacing (default: trailing for ddpm, uniform otherwise)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="grid steps for every sampler (default: a per-sampler choice)")
    p.add_argument("--n", type=_positive_int, default=4000, help="samples per sampler (default: 4000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output dir (default: out/demo)")
    p.set_defaults(func=cmd_demo)


def _weights(mixture, x) -> list[float]:
    import torch

    counts = torch.bincount(mixture.classify(x), minlength=len(mixture.weights))
    return (counts.double() / len(x)).tolist()


def _state_labels(process, steps: int, spacing: str, n_states: int) -> list[str]:
    """Labels of the states of a trajectory: the grid times, then the final x0 jump."""
    from .timesteps import time_grid

    ts = time_grid(process, steps, spacing).tolist()
    return ([f"t = {t:.4g}" for t in ts] + ["x0 estimate"])[:n_states]


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    # The demo's tensors are tiny ((n, 3, 2)): one thread is as fast, and multi-threaded
    # kernels slow down 10-50x when the cores are shared with other work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _demo(args)
    finally:
        torch.set_num_threads(threads)


def _demo(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from . import make_process, sample
    from .metrics import energy_distance, sliced_wasserstein
    from .mixture import demo_mixture
    from .samplers import get_sampler
    from .timesteps import default_spacing, time_grid
    from .viz import scatter_grid, trajectory_gif

    if args.n < 2:
        raise CLIError("--n must be at least 2")
    mixture, dtype = demo_mixture(), torch.float64
    process = make_process(args.process)
    prediction = args.prediction
    if prediction is None:
        prediction = "velocity" if float(process.alpha(process.t_max)) == 0 else "eps"
    spacing = args.spacing or default_spacing(process)
    try:
        denoiser = mixture.denoiser(process, prediction)
        time_grid(process, 2, spacing)  # is the spacing possible for this process?
    except ValueError as e:
        raise CLIError(str(e)) from None
    truth = mixture.sample(args.n, torch.Generator().manual_seed(args.seed + 1))
    truth2 = mixture.sample(args.n, torch.Generator().manual_seed(args.seed + 2))
    reference = {"sliced_wasserstein": sliced_wasserstein(truth2, truth),
                 "energy_distance": energy_distance(truth2, truth),
                 "weights": _weights(mixture, truth2)}

    results, skipped, trajectories = {}, {}, {}
    bar = tqdm(args.samplers, desc="sampling", unit="sampler", leave=False, file=sys.stderr)
    for name in bar:
        bar.set_postfix_str(name)
        steps = args.steps or DEMO_STEPS.get(name, 50)
        want_traj = not trajectories and name in GIF_SAMPLERS
        start = time.perf_counter()
        try:
            out = sample(denoiser, (args.n, 2), name, steps=steps, spacing=spacing,
                         seed=args.seed, dtype=dtype, return_trajectory=want_traj)
        except (ValueError, FloatingPointError) as e:
            skipped[name] = str(e)
            tqdm.write(f"skipping {name}: {e}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        results[name] = {
            "steps": steps, "nfe": out.nfe,
            "stochastic": _is_stochastic(get_sampler(name)),
            "sliced_wasserstein": sliced_wasserstein(out.x, truth),
            "energy_distance": energy_distance(out.x, truth),
            "weights": _weights(mixture, out.x),
            "seconds": seconds,
        }
        if want_traj:
            trajectories[name] = (out.trajectory, _state_labels(process, steps, spacing,
                                                                len(out.trajectory)))
        results[name]["_x"] = out.x
    bar.close()
    if not results:
        print(f"hirune demo: every sampler failed for process {args.process!r}", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    desc = f"{args.process} / {prediction} prediction, {spacing} grid, n = {args.n}, float64"
    panels = [(f"{name}: NFE {r['nfe']}, SW {r['sliced_wasserstein']:.3f}", r.pop("_x"))
              for name, r in results.items()]
    png = scatter_grid(panels, args.out / "demo.png", truth=truth,
                       suptitle=f"{desc} (grey: data; truth vs truth SW "
                                f"{reference['sliced_wasserstein']:.3f})")
    if not trajectories:  # no deterministic sampler chosen (or none ran): DDIM for the GIF
        steps = args.steps or DEMO_STEPS["ddim"]
        out = sample(denoiser, (args.n, 2), "ddim", steps=steps, spacing=spacing, seed=args.seed,
                     dtype=dtype, return_trajectory=True)
        trajectories["ddim"] = (out.trajectory, _state_labels(process, steps, spacing,
                                                              len(out.trajectory)))
    (gif_name, (traj, labels)), = trajectories.items()
    gif = trajectory_gif(traj, args.out / "trajectory.gif", labels=labels, truth=truth,
                         title=f"{gif_name} on {args.process}")

    metrics = {
        "process": args.process, "prediction": prediction, "spacing": spacing, "n": args.n,
        "seed": args.seed, "dtype": "float64", "true_weights": mixture.weights.tolist(),
        "reference": reference, "samplers": results, "skipped": skipped,
        "trajectory_sampler": gif_name,
    }
    js = args.out / "metrics.json"
    js.write_text(json.dumps(metrics, indent=2) + "\n")

    print(f"hirune demo: {desc}")
    rows = [("sampler", "steps", "NFE", "sliced W", "energy", "weights", "time")]
    fmt_w = lambda w: "/".join(f"{v:.2f}" for v in w)  # noqa: E731
    for name, r in results.items():
        rows.append((name, str(r["steps"]), str(r["nfe"]), f"{r['sliced_wasserstein']:.4f}",
                     f"{r['energy_distance']:.5f}", fmt_w(r["weights"]), f"{r['seconds']:.1f}s"))
    rows.append(("(truth vs truth)", "", "", f"{reference['sliced_wasserstein']:.4f}",
                 f"{reference['energy_distance']:.5f}", fmt_w(reference["weights"]), ""))
    _print_rows(rows)
    print(f"  true weights: {fmt_w(mixture.weights.tolist())}")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")
    for path in (png, gif, js):
        print(f"wrote {path}")
    return 0


# --- listings ------------------------------------------------------------------------------

def _add_samplers(sub) -> None:
    p = sub.add_parser("samplers", help="list the samplers")
    p.set_defaults(func=cmd_samplers)


def cmd_samplers(args: argparse.Namespace) -> int:
    from . import SAMPLERS

    print("samplers (hirune.sample(denoiser, shape, sampler=NAME, steps=N)):")
    _print_rows([(name, "stochastic" if _is_stochastic(fn) else "deterministic", _first_line(fn))
                 for name, fn in SAMPLERS.items()])
    return 0


def _add_schedules(sub) -> None:
    p = sub.add_parser("schedules", help="list the beta schedules and time-grid spacings")
    p.set_defaults(func=cmd_schedules)


def cmd_schedules(args: argparse.Namespace) -> int:
    from . import BETA_SCHEDULES, SPACINGS
    from .timesteps import DISCRETE_SPACINGS

    print("beta schedules (DiscreteVP(NAME), make_betas(NAME)):")
    _print_rows([(name, _first_line(fn)) for name, fn in BETA_SCHEDULES.items()])
    print("time-grid spacings (time_grid(process, steps, NAME)):")
    _print_rows([(name, "discrete schedules only" if name in DISCRETE_SPACINGS else "any process")
                 for name in SPACINGS])
    return 0


def _add_processes(sub) -> None:
    p = sub.add_parser("processes", help="list the forward processes")
    p.set_defaults(func=cmd_processes)


def cmd_processes(args: argparse.Namespace) -> int:
    from . import PREDICTIONS, PROCESSES, make_process

    print("processes (make_process(NAME)):")
    rows = []
    for name in PROCESSES:
        proc = make_process(name)
        rows.append((name, repr(proc), _first_line(type(proc))))
    _print_rows(rows)
    print(f"predictions: {', '.join(PREDICTIONS)}")
    return 0


# --- entry point ---------------------------------------------------------------------------

def _add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="list the embedded datasets")
    p.set_defaults(func=cmd_datasets)


def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import dataset_info

    print(dataset_info())
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a preset (default: the main job)",
                       description="hirune train [PRESET] [key=value ...]; `hirune presets` lists "
                                   "the presets, and every TrainConfig field can be overridden.")
    p.add_argument("items", nargs="*", metavar="PRESET | key=value")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from .presets import parse_overrides, preset_config
    from .trainer import train

    items = list(args.items)
    preset = items.pop(0) if items and "=" not in items[0] else None
    try:
        cfg = preset_config(preset, parse_overrides(items))
    except ValueError as e:
        print(f"hirune train: {e}", file=sys.stderr)
        return 2
    print(f"training {preset or 'the default preset'} -> {cfg.out}")
    run = train(cfg)
    print(f"done at step {run.step}; checkpoints in {cfg.out}/checkpoints, samples in {cfg.out}/samples")
    if cfg.eval_samples:
        from .trainer import load_run

        metrics = evaluate_run(load_run(cfg.out), cfg.eval_samples)
        (Path(cfg.out) / "eval.json").write_text(json.dumps(metrics, indent=1))
        print(json.dumps(metrics))
    return 0


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the training presets")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import DEFAULT_PRESET, PRESETS

    print(f"training presets (hirune train NAME [key=value ...]; default {DEFAULT_PRESET}):")
    _print_rows([(name, p["dataset"], p["process"], p["objective"], p["model"]) for name, p in PRESETS.items()])
    return 0


def _add_guidance_options(p) -> None:
    g = p.add_argument_group("guidance (scale s: 1 = conditional, 0 = unconditional, > 1 sharper)")
    g.add_argument("--guidance", choices=("none", "cfg", "classifier"), default="none")
    g.add_argument("--scale", type=float, default=1.0, help="guidance scale s")
    g.add_argument("--classifier", default=None, metavar="RUN", help="noise-aware classifier run (classifier guidance)")
    g.add_argument("--rescale", type=float, default=0.0, help="cfg guidance rescale phi (Lin et al.; 0.7 typical)")
    g.add_argument("--interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="cfg only for noise levels sigma/alpha in (LO, HI]")


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="sample from a trained run (optionally guided)")
    p.add_argument("run", help="run directory (or checkpoint folder)")
    p.add_argument("--sampler", default=None, help="default: the run's preview sampler")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--spacing", default=None)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="label", type=int, default=None, help="class label (conditional or guided)")
    p.add_argument("--class-grid", action="store_true", help="one row per class, n // classes samples each")
    p.add_argument("--out", default="samples.png", help=".png grid, .npz arrays or .gif trajectory")
    _add_guidance_options(p)
    p.set_defaults(func=cmd_sample)


def _guided(run, args):
    """The run's denoiser under the guidance named by the arguments."""
    from .generate import guide
    from .trainer import load_run

    classifier = load_run(args.classifier) if getattr(args, "classifier", None) else None
    return guide(run, getattr(args, "guidance", "none"), getattr(args, "scale", 1.0), classifier=classifier,
                 rescale=getattr(args, "rescale", 0.0),
                 interval=tuple(args.interval) if getattr(args, "interval", None) else None)


def _run_samples(run, sampler, steps, spacing, n, seed, label=None, trajectory=False, denoiser=None,
                 per_class=False, guided_labels=False):
    from .generate import class_labels, generate

    labels = None
    if run.cfg.class_conditional or guided_labels:
        labels = class_labels(run, n, label, per_class)
    elif label is not None or per_class:
        raise ValueError("--class and --class-grid need a class-conditional run (class_conditional=true) "
                         "or classifier guidance")
    return generate(run, n, sampler, steps, spacing, seed, denoiser=denoiser, labels=labels, trajectory=trajectory)


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from .trainer import load_run
    from .viz import image_grid, scatter_grid, trajectory_gif

    run = load_run(args.run)
    out_path = Path(args.out)
    if out_path.suffix not in (".png", ".npz", ".gif"):
        print(f"hirune sample: --out must end in .png, .npz or .gif, got {args.out!r}", file=sys.stderr)
        return 2
    try:
        out, labels = _run_samples(run, args.sampler, args.steps, args.spacing, args.n, args.seed,
                                   args.label, trajectory=out_path.suffix == ".gif", denoiser=_guided(run, args),
                                   per_class=args.class_grid, guided_labels=args.guidance == "classifier")
    except ValueError as e:
        print(f"hirune sample: {e}", file=sys.stderr)
        return 2
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if out_path.suffix == ".npz":
        np.savez(out_path, samples=out.x.numpy(), **({"labels": labels.numpy()} if labels is not None else {}))
    elif out_path.suffix == ".gif":
        frames = out.trajectory if run.data.kind == "toy" else None
        if frames is None:
            from PIL import Image
            import tempfile

            pictures = []
            with tempfile.TemporaryDirectory() as tmp:
                for i, x in enumerate(out.trajectory[:: max(1, len(out.trajectory) // 30)] + [out.x]):
                    pictures.append(Image.open(image_grid(x, Path(tmp) / f"{i}.png")).convert("P"))
                pictures[0].save(out_path, save_all=True, append_images=pictures[1:], duration=80, loop=0)
        else:
            trajectory_gif(frames, out_path)
    elif run.data.kind == "image":
        image_grid(out.x, out_path, nrow=max(1, args.n // run.data.num_classes) if args.class_grid else None)
    else:
        scatter_grid([(f"{args.sampler or run.cfg.sampler}, {out.nfe} NFE", out.x)], out_path,
                     truth=run.data.data[:2000])
    print(f"wrote {out_path} ({out.nfe} network evaluations)")
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="metrics of a trained run, as one JSON line")
    p.add_argument("run")
    p.add_argument("--n", type=int, default=1000, help="number of samples")
    p.add_argument("--sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nll", type=int, default=0, metavar="N",
                   help="toys: also the exact negative log-likelihood (probability-flow ODE, exact "
                        "divergence) of N test points, beside the true density's where it is known")
    _add_guidance_options(p)
    p.set_defaults(func=cmd_eval)


def evaluate_run(run, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 nll: int = 0, denoiser=None, guided_labels: bool = False) -> dict:
    """Sample `n` and score them: evaluator Frechet distance / class accuracy for digit
    sets, sliced Wasserstein / energy distance for toys, each beside its real-vs-real value.
    nll > 0 (toys): the model's exact log-likelihood of that many test points (nats).
    denoiser: a guided denoiser of the run (labels drawn in turn when guided_labels).
    A classifier run reports its test accuracy at several noise levels instead."""
    from .data import load_dataset
    from .metrics import energy_distance, sliced_wasserstein

    if run.is_classifier:
        return {"step": run.step, "dataset": run.cfg.dataset, **classifier_accuracy(run)}
    out, labels = _run_samples(run, sampler, steps, None, n, seed, denoiser=denoiser, guided_labels=guided_labels)
    metrics = {"step": run.step, "dataset": run.cfg.dataset, "sampler": sampler or run.cfg.sampler,
               "nfe": out.nfe}
    if run.data.kind == "image":
        from .evaluator import EVALUATED, evaluate_images

        if run.cfg.dataset in EVALUATED:
            metrics.update(evaluate_images(run.cfg.dataset, out.x, labels))
    else:
        test = load_dataset(run.cfg.dataset, "test").data[:n].double()
        ref = load_dataset(run.cfg.dataset, "train").data[:n].double()
        x = out.x.double()
        metrics.update({"sliced_wasserstein": sliced_wasserstein(x, test),
                        "energy_distance": energy_distance(x, test),
                        "sliced_wasserstein_real_vs_real": sliced_wasserstein(ref, test),
                        "energy_distance_real_vs_real": energy_distance(ref, test)})
    if nll:
        if run.data.kind != "toy":
            raise CLIError("--nll is for 2-D toys here (exact divergence); images come with issue 5")
        metrics.update(toy_nll(run, nll))
    return metrics


def classifier_accuracy(run, fractions=(0.0, 0.25, 0.5, 0.75, 0.9)) -> dict:
    """Test-split accuracy of a noise-aware classifier at times t = fraction of the way
    from t_min to t_max (x_t drawn with a fixed seed)."""
    import torch

    from .data import load_dataset
    from .denoiser import time_batch

    test = load_dataset(run.cfg.dataset, "test")
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for f in fractions:
            p = run.process
            t = round(f * (p.T - 1)) if p.discrete else p.t_min + f * (p.t_max - p.t_min)
            x_t = p.q_sample(test.data, torch.tensor(float(t)), torch.randn(test.data.shape, generator=g))
            logits = run.model(x_t, time_batch(t, x_t))
            out[f"accuracy_t{t:g}"] = float((logits.argmax(1) == test.labels).double().mean())
    return out


def toy_nll(run, n: int) -> dict:
    """Mean negative log-likelihood (nats) of n test points under the model's probability-flow
    ODE with the exact divergence, its standard error over points, and the true density's
    NLL of the same points where the toy has one (the floor a perfect model would reach)."""
    import math

    import torch

    from .data import load_dataset
    from .data.toys import TOYS
    from .likelihood import ode_log_likelihood

    x = load_dataset(run.cfg.dataset, "test").data[:n].double()
    run.model.double()
    try:
        result = ode_log_likelihood(run.denoiser, x)
    finally:
        run.model.float()
    out = {"nll_nats": float(result.nll.mean()),
           "nll_stderr": float(result.nll.std() / math.sqrt(len(x))),
           "nll_points": len(x), "nll_nfe": result.nfe}
    mixture = getattr(TOYS.get(run.cfg.dataset), "mixture", None)
    if mixture is not None:
        out["nll_true_nats"] = float(-mixture.log_prob(x).mean())
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from .trainer import load_run

    run = load_run(args.run)
    try:
        metrics = {"run": str(args.run), **evaluate_run(run, args.n, args.sampler, args.steps, args.seed, args.nll,
                                                        denoiser=None if run.is_classifier else _guided(run, args),
                                                        guided_labels=args.guidance == "classifier")}
    except ValueError as e:
        print(f"hirune eval: {e}", file=sys.stderr)
        return 2
    if args.guidance != "none":
        metrics.update({"guidance": args.guidance, "scale": args.scale})
    print(json.dumps(metrics))
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: `hirune bench train` (training images/s vs diffusers)")
    bench = p.add_subparsers(dest="bench", metavar="BENCH")
    bench.required = True
    t = bench.add_parser("train", help="images/s of a preset's training step, beside diffusers' twin UNet",
                         description="hirune bench train [PRESET] [key=value ...]: times the preset's "
                                     "whole optimizer step (objective, backward, clipping, AdamW, EMA) and "
                                     "the same step of diffusers' UNet2DModel built to the same "
                                     "architecture, taking turns.  Default preset: the main job's.")
    t.add_argument("items", nargs="*", metavar="PRESET | key=value")
    t.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the preset's)")
    t.add_argument("--steps", type=_positive_int, default=15, help="timed steps per contestant")
    t.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    t.add_argument("--no-peer", dest="peer", action="store_false", help="time hirune only")
    t.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    t.set_defaults(func=cmd_bench_train)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from .bench import bench_train, format_result
    from .presets import parse_overrides

    items = list(args.items)
    preset = items.pop(0) if items and "=" not in items[0] else None
    try:
        result = bench_train(preset, parse_overrides(items), batch=args.batch, steps=args.steps,
                             warmup=args.warmup, peer=args.peer)
    except ValueError as e:
        print(f"hirune bench train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_result(result))
    return 0


def _add_invert(sub) -> None:
    p = sub.add_parser("invert", help="DDIM-invert an image to its noise and reconstruct it (PSNR)")
    p.add_argument("run")
    p.add_argument("image", help="an image file, or test:N / train:N from the run's dataset")
    p.add_argument("--class", dest="label", type=int, default=None,
                   help="condition (class-conditional runs; default: the image's own label where known)")
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--plain", action="store_true", help="plain inversion instead of the exact fixed-point one")
    p.add_argument("--out", default="inversion.png", help="PNG: original | noise | reconstruction (+ .npz noise)")
    _add_guidance_options(p)
    p.set_defaults(func=cmd_invert)


def cmd_invert(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from .editing import invert, load_image_for, psnr, regenerate
    from .trainer import load_run
    from .viz import image_grid

    run = load_run(args.run)
    try:
        x, known = load_image_for(run, args.image)
        label = args.label if args.label is not None else known
        labels = torch.tensor([label]) if run.cfg.class_conditional and label is not None else None
        if run.cfg.class_conditional and labels is None:
            raise ValueError("a class-conditional run needs --class for an image without a known label")
        d = _guided(run, args)
        inv = invert(run, x, labels=labels, denoiser=d, steps=args.steps, exact=not args.plain)
        back = regenerate(run, inv.x, labels=labels, denoiser=d, steps=args.steps)
    except ValueError as e:
        print(f"hirune invert: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    image_grid(torch.cat([x, inv.x.clamp(-3, 3) / 3, back.x]), out, nrow=3)
    np.savez(out.with_suffix(".npz"), noise=inv.x.numpy(), image=x.numpy(), reconstruction=back.x.numpy())
    print(json.dumps({"psnr_db": float(psnr(back.x, x)[0]),
                      "relative_error": float((back.x - x).norm() / x.norm()), "nfe": inv.nfe + back.nfe,
                      "exact": not args.plain, "steps": args.steps, "out": str(out)}))
    return 0


def _add_edit(sub) -> None:
    p = sub.add_parser("edit", help="edit an image's class: invert under --from, resample under --to")
    p.add_argument("run", help="a class-conditional run")
    p.add_argument("image", help="an image file, or test:N / train:N from the run's dataset")
    p.add_argument("--from", dest="source", type=int, default=None, help="its class (default: its label)")
    p.add_argument("--to", dest="target", type=int, required=True)
    p.add_argument("--scale", type=float, default=1.0, help="classifier-free guidance scale on both passes")
    p.add_argument("--strength", type=float, default=1.0,
                   help="fraction of the noise range to invert (SDEdit style; < 1 keeps more of the image)")
    p.add_argument("--steps", type=_positive_int, default=50)
    p.add_argument("--out", default="edit.png", help="PNG: original | edit")
    p.set_defaults(func=cmd_edit)


def cmd_edit(args: argparse.Namespace) -> int:
    import torch

    from .editing import edit, load_image_for, psnr
    from .trainer import load_run
    from .viz import image_grid

    run = load_run(args.run)
    try:
        x, known = load_image_for(run, args.image)
        source = args.source if args.source is not None else known
        if source is None:
            raise ValueError("--from is needed for an image without a known label")
        edited, _ = edit(run, x, source, args.target, scale=args.scale, steps=args.steps, strength=args.strength)
    except ValueError as e:
        print(f"hirune edit: {e}", file=sys.stderr)
        return 2
    image_grid(torch.cat([x, edited]), args.out, nrow=2)
    result = {"from": source, "to": args.target, "psnr_to_original_db": float(psnr(edited, x)[0]), "out": args.out}
    from .evaluator import EVALUATED, load_evaluator

    if run.cfg.dataset in EVALUATED:
        with torch.no_grad():
            result["evaluator_class"] = int(load_evaluator(run.cfg.dataset)(edited).argmax(1)[0])
    print(json.dumps(result))
    return 0


COMMANDS: tuple[Callable, ...] = (_add_demo, _add_samplers, _add_schedules, _add_processes,
                                  _add_datasets, _add_train, _add_presets, _add_sample, _add_eval,
                                  _add_invert, _add_edit, _add_bench)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="hirune", description="Diffusion and flow-based generative models on one shared core.")
    parser.add_argument("--version", action="version", version=f"hirune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits with 2 on bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"hirune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- keep the interpreter's flush quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())
