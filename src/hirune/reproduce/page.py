"""A note's report folder: reports/NOTE/index.html (the claim, the table, the notes under it,
the figure), NOTE.json (every number) and NOTE.png, readable without a server."""

from __future__ import annotations

import html
from pathlib import Path

from ..playbook.report import Report, cell, write


def write_report(report: Report, shows: str, budget: str, folder: str | Path) -> Path:
    """Write the folder; returns index.html's path."""
    folder = Path(folder)
    written = write(report, folder)
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
<p>Budget: {html.escape(budget)}. The raw numbers: <a href="{report.name}.json">{report.name}.json</a>.</p>
<h2>{html.escape(report.title)}</h2>
<table><tr>{head}</tr>{rows}</table>
<ul>{notes}</ul>
{figure}
</body></html>
"""
    index = folder / "index.html"
    index.write_text(page)
    return index
