"""Listings: `hirune samplers | schedules | processes | datasets | presets`."""

from __future__ import annotations

import argparse

from .common import _first_line, _is_stochastic, _print_rows


def _add_samplers(sub) -> None:
    p = sub.add_parser("samplers", help="list the samplers")
    p.set_defaults(func=cmd_samplers)


def cmd_samplers(args: argparse.Namespace) -> int:
    from .. import SAMPLERS

    print("samplers (hirune.sample(denoiser, shape, sampler=NAME, steps=N)):")
    _print_rows([(name, "stochastic" if _is_stochastic(fn) else "deterministic", _first_line(fn))
                 for name, fn in SAMPLERS.items()])
    return 0


def _add_schedules(sub) -> None:
    p = sub.add_parser("schedules", help="list the beta schedules and time-grid spacings")
    p.set_defaults(func=cmd_schedules)


def cmd_schedules(args: argparse.Namespace) -> int:
    from .. import BETA_SCHEDULES, SPACINGS
    from ..sampling.timesteps import DISCRETE_SPACINGS

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
    from .. import PREDICTIONS, PROCESSES, make_process

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
    from ..data import dataset_info

    print(dataset_info())
    return 0



def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the training presets")
    p.set_defaults(func=cmd_presets)


def cmd_presets(args: argparse.Namespace) -> int:
    from ..training.presets import DEFAULT_PRESET, PRESETS

    print(f"training presets (hirune train NAME [key=value ...]; default {DEFAULT_PRESET}):")
    # flows and autoencoders have no forward process; latent runs name their autoencoder, dalle runs
    # their image tokenizer
    _print_rows([(name, p["dataset"], p.get("family", "diffusion"), p.get("process", "-"), p.get("objective", "-"),
                  p["model"] + (f" on {p['autoencoder']}" if p.get("autoencoder") else "")
                  + (f" over {p['tokenizer']}" if p.get("tokenizer") else ""))
                 for name, p in PRESETS.items()])
    return 0

