"""`hirune reproduce NOTE [--budget tiny|small|full]`: a note's central claim in one command
(`hirune.reproduce`); `--list` names every note with what it shows and what it costs."""

from __future__ import annotations

import argparse
import json
import time

from .common import CLIError


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="a note's central claim at digit scale: table, report page, numbers",
                       description="hirune reproduce NOTE: measure the note's claim, print its table and write "
                                   "reports/NOTE/ (index.html, NOTE.json, NOTE.png).  hirune reproduce --list names "
                                   "the notes.")
    p.add_argument("note", nargs="?", metavar="NOTE")
    p.add_argument("--list", action="store_true", help="name every note, what it shows and what it costs")
    p.add_argument("--budget", default="small", help="tiny (seconds) | small (minutes on 2 CPU cores, the default) "
                                                     "| full (the README's figures)")
    p.add_argument("--out", default="reports", help="the reports folder (default: reports/; the note's goes in NOTE/)")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..playbook.report import table
    from ..reproduce import BUDGETS, NOTES, get
    from ..reproduce.page import write_report
    from ..reproduce.registry import check_budget

    if args.list or args.note is None:
        width = max(map(len, NOTES))
        for note in NOTES.values():
            cost = ", ".join(f"{b} {note.cost[b]}" for b in BUDGETS)
            print(f"{note.name.ljust(width)}  {note.shows}\n{' ' * width}  cost: {cost}")
        return 0
    try:
        note = get(args.note)
        check_budget(args.budget)
    except ValueError as e:
        raise CLIError(str(e)) from None
    start = time.perf_counter()
    report = note.run(args.budget)
    index = write_report(report, note.shows, args.budget, Path(args.out) / note.name, time.perf_counter() - start)
    print(json.dumps(report.as_dict(), indent=1, default=str) if args.json else table(report))
    print(f"wrote {index}")
    return 0
