"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import inspect


class CLIError(Exception):
    """A usage error found after parsing (bad combination of options): exit code 2."""


# --- shared helpers ------------------------------------------------------------------------

def _integer_at_least(text: str, minimum: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _integer_at_least(text, 1, "a positive integer")


def _size(text: str) -> tuple[int, int]:
    """HxW (e.g. 32x24) -> (H, W), two positive integers."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HxW, two positive integers such as 32x24, got {text!r}")
    return int(parts[0]), int(parts[1])


def _size_pair(text: str) -> tuple[int, ...]:
    """'H' -> (H,), 'H,W' -> (H, W) (integers; offsets may be negative)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not 1 <= len(values) <= 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; valid: H or H,W (integers)")
    return values


def _count(text: str) -> int:
    """A count where 0 turns the option off."""
    return _integer_at_least(text, 0, "a non-negative integer (0: off)")


def _first_line(obj, width: int = 100) -> str:
    """The first paragraph of obj's docstring on one line, cut to `width` characters."""
    doc = (inspect.getdoc(obj) or "").strip()
    text = " ".join(doc.split("\n\n")[0].split())
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def _is_stochastic(fn) -> bool:
    """Whether a sampler draws fresh noise with its default options (DDIM: only for eta > 0)."""
    from ..sampling import STOCHASTIC

    eta = inspect.signature(fn).parameters.get("eta")
    return fn in STOCHASTIC and not (eta is not None and eta.default == 0)


def _print_rows(rows: list[tuple[str, ...]], indent: str = "  ") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())

