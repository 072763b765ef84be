"""The `hirune` command line.

    demo.py      hirune demo: an exact mixture model, several samplers
    catalog.py   hirune samplers | schedules | processes | datasets | presets
    runs.py      hirune train | sample | eval | export (guidance options)
    control.py   hirune invert | edit
    bench.py     hirune bench train
    plan.py      hirune plan: memory and communication per GPU under ddp / zero1-3

Each subcommand is one `_add_<name>(subparsers)` function that declares its arguments and
one `cmd_<name>(args) -> int` function that runs it; adding a command means writing the
pair and listing the first in `COMMANDS`.
"""


from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from .bench import _add_bench
from .catalog import _add_datasets, _add_presets, _add_processes, _add_samplers, _add_schedules
from .common import CLIError
from .control import _add_edit, _add_invert
from .demo import _add_demo
from .plan import _add_plan
from .runs import _add_eval, _add_export, _add_sample, _add_train

COMMANDS: tuple[Callable, ...] = (_add_demo, _add_samplers, _add_schedules, _add_processes,
                                  _add_datasets, _add_train, _add_presets, _add_sample, _add_eval, _add_export,
                                  _add_invert, _add_edit, _add_bench, _add_plan)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    except RuntimeError as e:
        from ..checkpoint import CheckpointError

        if not isinstance(e, CheckpointError):
            raise
        print(f"hirune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- keep the interpreter's flush quiet
        return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["COMMANDS", "CLIError", "build_parser", "main"]
