"""A note's report folder: reports/NOTE/index.html (the claim, the table, the notes under it,
the figure), NOTE.json (every number) and NOTE.png, readable without a server."""

from __future__ import annotations

import html
from pathlib import Path

from ..playbook.report import Report, cell, write


def measured_on(budget: str, seconds: float) -> dict:
    """What a report was measured with: the budget, the wall time, the machine, the versions, the date."""
    import datetime
    import os
    import platform
    from importlib.metadata import version

    import torch

    device = (torch.cuda.get_device_name() if torch.cuda.is_available() else
              f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    return {"budget": budget, "seconds": round(seconds, 3), "device": device, "torch": torch.__version__,
            "hirune": version("hirune"), "date": datetime.date.today().isoformat()}


def write_report(report: Report, shows: str, budget: str, folder: str | Path, seconds: float | None = None) -> Path:
    """Write the folder (the JSON's "run": `measured_on`); returns index.html's path."""
    folder = Path(folder)
    run = measured_on(budget, seconds or 0.0)
    written = write(report, folder, {"run": run})
    head = "".join(f"<th>{html.escape(c)}</th>" for c in report.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>" for row in report.rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    figure = "".join(f'<p><img src="{p.name}" alt="{html.escape(report.title)}"></p>'
                     for p in written if p.suffix == ".png")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hirune reproduce {html.escape(report.name)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head>
<body><h1>{html.escape(report.name)}</h1>
<p><b>The claim:</b> {html.escape(shows)}</p>
<p>Budget: {html.escape(budget)}, {run['seconds']:g} s on {html.escape(run['device'])}, torch
{html.escape(run['torch'])}, hirune {html.escape(str(run['hirune']))}, {run['date']}.
The raw numbers: <a href="{report.name}.json">{report.name}.json</a>.</p>
<h2>{html.escape(report.title)}</h2>
<table><tr>{head}</tr>{rows}</table>
<ul>{notes}</ul>
{figure}
</body></html>
"""
    index = folder / "index.html"
    index.write_text(page)
    return index
