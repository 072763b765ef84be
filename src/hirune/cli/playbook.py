"""`hirune playbook [NAME [key=value ...]]`: the large-model training notes as commands.

Without NAME it lists the playbooks; with one it runs it, prints its table (or --json) and
writes NAME.png and NAME.json into --out.  Options are the playbook function's keyword
arguments, typed by their defaults (`hirune playbook ring-allreduce worlds=2,3 sizes=1000`).
"""

from __future__ import annotations

import argparse
import inspect
import json

from .common import CLIError


def _add_playbook(sub) -> None:
    p = sub.add_parser("playbook", help="the training notes as measurements: memory, collectives, hand DP / ZeRO",
                       description="hirune playbook: list the playbooks; hirune playbook NAME [key=value ...]: run "
                                   "one, print its table and write NAME.png and NAME.json into --out.  These are "
                                   "teaching implementations checked against torch's; the trainer does not use them.")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("items", nargs="*", metavar="key=value", help="the playbook's options (listed without NAME)")
    p.add_argument("--out", default="playbook", help="folder for NAME.png and NAME.json (default: playbook/)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=cmd_playbook)


def options(fn) -> dict:
    """The playbook's keyword options and their defaults."""
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def parse_options(fn, items: list[str]) -> dict:
    """key=value items typed like the defaults (int, float, bool, str, a tuple as comma-separated values)."""
    valid = options(fn)
    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq:
            raise CLIError(f"{item!r} is not key=value")
        if key not in valid:
            raise CLIError(f"unknown option {key!r}; valid: {' '.join(f'{k}={_show(v)}' for k, v in valid.items())}"
                           if valid else f"unknown option {key!r}: this playbook takes none")
        out[key] = _parse(key, text, valid[key])
    return out


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _parse(key: str, text: str, default):
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(default, tuple):
            kind = type(default[0]) if default else int
            return tuple(kind(v) for v in text.split(",") if v.strip())
        return type(default)(text)
    except ValueError:
        raise CLIError(f"{key}={text!r} is not valid; expected {type(default).__name__} "
                       f"like {_show(default)}") from None


def cmd_playbook(args: argparse.Namespace) -> int:
    from ..playbook import PLAYBOOKS, table, write

    if args.name is None:
        width = max(map(len, PLAYBOOKS))
        for name, (fn, description) in PLAYBOOKS.items():
            print(f"{name.ljust(width)}  {description}")
            listed = ' '.join(f'{k}={_show(v)}' for k, v in options(fn).items()) or '(none)'
            print(f"{''.ljust(width)}    options: {listed}")
        return 0
    if args.name not in PLAYBOOKS:
        raise CLIError(f"no playbook {args.name!r}; valid: {', '.join(PLAYBOOKS)}")
    fn, _ = PLAYBOOKS[args.name]
    report = fn(**parse_options(fn, args.items))
    written = write(report, args.out)
    if args.json:
        print(json.dumps(report.as_dict(), default=str))
    else:
        print(table(report))
        print("wrote " + ", ".join(map(str, written)))
    return 0
