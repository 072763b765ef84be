"""Counts of examples a user asks for (a batch, samples, test examples), checked before
anything is allocated: a whole number in range, no more than there are, and an array that
fits in this machine's memory.

    check_count("nll", 500, minimum=0, available=(10_000, "the two_moons test split"))
    check_fits("batch_size", 128, (1, 28, 28), what="examples")

The memory test is deliberately coarse: it refuses only counts whose float32 array *alone*
exceeds the physical memory (`os.sysconf`), which no computation on them could survive.
"""

from __future__ import annotations

import math
import os
from numbers import Integral

BYTES_PER_VALUE = 4  # float32


def physical_memory() -> int | None:
    """This machine's physical memory in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.0f} GB" if n_bytes >= 1e10 else f"{n_bytes / 1e9:.1f} GB"


def check_count(key: str, value, minimum: int = 1, available: tuple[int, str] | None = None,
                note: str = "") -> int:
    """`value` as an int: a whole number >= minimum, and at most available = (count, of what)
    where given; else ValueError naming `key`, the value and what is valid (`note` added)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{key}={value!r} is not valid; valid: an integer >= {minimum}{note}")
    if available is not None and value > available[0]:
        count, of = available
        raise ValueError(f"{key}={value}: {of} has {count} examples; give at most {count}")
    return int(value)


def check_fits(key: str, count: int, shape: tuple[int, ...] | None, what: str = "examples") -> None:
    """Refuse `count` examples of `shape` whose float32 array alone would exceed the
    physical memory (an unknown shape or memory passes)."""
    memory = physical_memory()
    if shape is None or memory is None:
        return
    need = count * math.prod(shape) * BYTES_PER_VALUE
    if need > memory:
        values = " x ".join(map(str, shape))
        raise ValueError(f"{key}={count}: {count} {what} of {values} values are {gigabytes(need)} as float32, "
                         f"more than this machine's memory ({gigabytes(memory)})")
