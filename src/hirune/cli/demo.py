"""`hirune demo`: an exact Gaussian-mixture model sampled by several samplers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import CLIError, _is_stochastic, _positive_int, _print_rows

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
    from .. import SAMPLERS

    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SAMPLERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown sampler(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid: {', '.join(sorted(SAMPLERS))}")
    return list(dict.fromkeys(names))


def _add_demo(sub) -> None:
    from .. import PREDICTIONS, PROCESSES, SPACINGS

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
    from ..sampling.timesteps import time_grid

    ts = time_grid(process, steps, spacing).tolist()
    return ([f"t = {t:.4g}" for t in ts] + ["x0 estimate"])[:n_states]


def cmd_demo(args: argparse.Namespace) -> int:
    from ..reproduce.sampling import one_thread

    # The demo's tensors are tiny ((n, 3, 2)): one thread is as fast, and multi-threaded
    # kernels slow down 10-50x when the cores are shared with other work.
    with one_thread():
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from .. import make_process, sample
    from ..metrics.distances import energy_distance, sliced_wasserstein
    from ..process.mixture import demo_mixture
    from ..sampling import get_sampler
    from ..sampling.timesteps import default_spacing, time_grid
    from ..viz import scatter_grid, trajectory_gif

    if args.n < 2:
        raise CLIError("--n must be at least 2")
    mixture, dtype = demo_mixture(), torch.float64
    process = make_process(args.process)
    prediction = args.prediction
    if prediction is None:
        prediction = "velocity" if float(process.alpha(process.t_max)) == 0 else "eps"
    spacing = args.spacing or default_spacing(process)
    denoiser = mixture.denoiser(process, prediction)
    time_grid(process, 2, spacing)  # is the spacing possible for this process?
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
        raise CLIError(f"every sampler failed for process {args.process!r}")

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
