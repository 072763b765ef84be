"""The notes of `hirune reproduce` run at --budget tiny through the command, for their tests."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from hirune.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def run_at_tiny(names: list[str], root: Path) -> dict[str, tuple[str, dict, Path]]:
    """Each note once, `hirune reproduce NAME --budget tiny --out ROOT`: {name: (what it printed, its
    report JSON, its folder)}, after checking that the folder holds the page with the table and the
    figure, the figure and the JSON (with the budget, wall time and machine it was measured with)."""
    out = {}
    for name in names:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["reproduce", name, "--budget", "tiny", "--out", str(root)]) == 0
        folder = root / name
        page = (folder / "index.html").read_text()
        assert "<table>" in page and f'src="{name}.png"' in page, name
        assert (folder / f"{name}.png").read_bytes()[:8] == PNG, name
        report = json.loads((folder / f"{name}.json").read_text())
        run = report["run"]  # what it was measured with, in the JSON and on the page
        assert run["budget"] == "tiny" and isinstance(run["seconds"], float) and run["torch"], name
        assert "Budget: tiny, " in page, name
        out[name] = (printed.getvalue(), report, folder)
    return out
