"""What a playbook hands back, and how it is shown: an aligned plain-text table (or JSON) and a PNG.

matplotlib (Agg backend, no display needed) is imported inside `pyplot`, so importing the
playbooks stays light.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Report:
    name: str                         # the playbook's name: NAME.png, NAME.json
    title: str                        # one line above the table
    columns: list[str]
    rows: list[list]
    notes: list[str] = field(default_factory=list)        # lines under the table: what it shows
    data: dict = field(default_factory=dict)              # everything measured, JSON-able
    plot: Callable[[Path], None] | None = None            # writes the figure to the given path

    def as_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "columns": self.columns, "rows": self.rows,
                "notes": self.notes, "data": self.data}


def cell(value) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e12:
            return str(int(value))
        if 1e3 <= abs(value) < 1e12:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e12 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(cell(v) for v in value) + "]"
    return str(value)


def table(report: Report) -> str:
    """The title, the rows aligned under their columns (numbers to the right), then the notes."""
    cells = [[cell(v) for v in row] for row in report.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(report.columns)]
    numeric = [all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in report.rows)
               for i in range(len(report.columns))]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [report.title, line(report.columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    out += [""] * bool(report.notes) + report.notes
    return "\n".join(out)


def write(report: Report, out: str | Path, extra: dict | None = None) -> list[Path]:
    """NAME.json (the report and its data, plus `extra`'s keys) and NAME.png (the figure) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{report.name}.json"]
    written[0].write_text(json.dumps({**report.as_dict(), **(extra or {})}, indent=1, default=str) + "\n")
    if report.plot is not None:
        written.append(out / f"{report.name}.png")
        report.plot(written[-1])
    return written


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
