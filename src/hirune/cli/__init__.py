"""The `hirune` command line.

    demo.py      hirune demo: an exact mixture model, several samplers
    catalog.py   hirune samplers | schedules | processes | datasets | presets
    runs.py      hirune train | sample | eval | export (guidance options)
    control.py   hirune invert | edit
    bench.py     hirune bench train
    plan.py      hirune plan: memory and communication per GPU under ddp / zero1-3
    playbook.py  hirune playbook: the large-model training notes as measurements (teaching code)
    reproduce.py hirune reproduce: a note's central claim in one command, a report page
    interop.py   hirune import: a diffusers model folder as a run (export --format diffusers: runs.py)
    serve.py     hirune serve: a local web page over trained runs (sample, edit, loss curves)

Each subcommand is one `_add_<name>(subparsers)` function that declares its arguments and
one `cmd_<name>(args) -> int` function that runs it; adding a command means writing the
pair and listing the first in `COMMANDS`.

Errors: a command raises; `main` turns every expected error (`expected`: bad input, missing
or existing files, a broken checkpoint, a stopped run, a missing optional extra) into one
line on stderr, `hirune CMD: error: <message>`, and exit status 2.  Anything else is a bug
and keeps its traceback; HIRUNE_DEBUG=1 shows the traceback of every error.
"""


from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from ..allocator import keep_freed_memory
from .bench import _add_bench
from .cascade import _add_cascade
from .catalog import _add_datasets, _add_presets, _add_processes, _add_samplers, _add_schedules
from .common import CLIError
from .control import _add_edit, _add_invert
from .demo import _add_demo
from .interop import _add_import
from .plan import _add_plan
from .playbook import _add_playbook
from .reproduce import _add_reproduce
from .runs import _add_eval, _add_export, _add_sample, _add_train
from .serve import _add_serve
from .unclip import _add_unclip

COMMANDS: tuple[Callable, ...] = (_add_demo, _add_samplers, _add_schedules, _add_processes,
                                  _add_datasets, _add_train, _add_presets, _add_sample, _add_eval, _add_export,
                                  _add_invert, _add_edit, _add_bench, _add_plan, _add_cascade,
                                  _add_unclip, _add_playbook, _add_reproduce, _add_import, _add_serve)


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


# file-system errors of the user's environment (a full disk, a quota, a read-only mount)
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def expected(error: BaseException) -> bool:
    """Whether `error` is one hirune expects (a user's input or environment, said in its
    message) rather than a bug: bad values, missing / existing / unwritable files, a full
    disk, a broken checkpoint, a run folder that is in use or not a run's, a stopped run
    (FloatingPointError), a missing package (an ImportError not of hirune's own modules)."""
    from ..checkpoint import CheckpointError
    from ..training.run_folder import RunFolderError

    if isinstance(error, ImportError):
        return not (error.name or "").startswith("hirune")
    if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
        return True
    return isinstance(error, (CLIError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                              IsADirectoryError, PermissionError, CheckpointError, RunFolderError,
                              FloatingPointError))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits with 2 on bad arguments, and an
    expected error returns 2 after one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    keep_freed_memory()  # CPU work re-allocates the same tensors over and over (hirune.allocator)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 -- keep the interpreter's flush quiet
        return 0
    except Exception as e:
        if not expected(e):
            raise
        if os.environ.get("HIRUNE_DEBUG") == "1":
            traceback.print_exc()
        rank = int(os.environ.get("RANK", 0)) if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
        where = f"rank {rank}: " if rank is not None else ""
        message = " ".join(str(e).splitlines()) or type(e).__name__
        print(f"hirune {args.command}: error: {where}{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["COMMANDS", "CLIError", "build_parser", "main"]
