"""Checking settings (a `TrainConfig`, a family's `Config`): each field's type, the range of
each number, the choices of each name.  Every refusal is a ValueError of one form,

    "<key>=<value> is not valid; valid: <what is>"

so a message always names the key, the value given and what would have been accepted.

    check_types(cfg)                                        every field against its annotation
    check_ranges(cfg, {"lr": Range(0, low_open=True)})      numbers inside their ranges
    check_choices(cfg, {"precision": ("fp32", "bf16")})     names among their choices
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real


def refuse(key: str, value, valid: str) -> ValueError:
    """The one form of a refused setting."""
    return ValueError(f"{key}={value!r} is not valid; valid: {valid}")


@dataclass(frozen=True)
class Range:
    """The valid values of a number: between `low` and `high`, each end included unless
    `low_open` / `high_open`; `integer`: whole numbers only; `finite`: no inf (NaN is never
    valid); `hint`: what the number means, added to the message."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    finite: bool = True
    hint: str = ""

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, Integral if self.integer else Real):
            return False
        if math.isnan(value) or (self.finite and math.isinf(value)):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number" if self.finite else "a number"
        low, high = _number(self.low), _number(self.high)
        if self.low > -math.inf and self.high < math.inf:
            where = f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low > -math.inf:
            where = f"{'>' if self.low_open else '>='} {low}"
        elif self.high < math.inf:
            where = f"{'<' if self.high_open else '<='} {high}"
        else:
            where = ""
        return " ".join(filter(None, (kind, where))) + (f" ({self.hint})" if self.hint else "")


def _number(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


# what each annotation accepts, and how the message says it
_TYPES = {"int": ((Integral,), "an integer"), "float": ((Real,), "a number"), "bool": ((bool,), "true or false"),
          "str": ((str,), "a string"), "dict": ((Mapping,), "a dict (JSON object)")}


def check_types(settings) -> None:
    """Every field of the dataclass `settings` holds a value of its annotated type (int, float,
    bool, str, dict; a bool is not a number, an int is a float)."""
    for f in dataclasses.fields(settings):
        name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")  # "int" or int
        if name not in _TYPES:
            continue  # other annotations (unions, lists, ...) are not checked here
        value, (types, words) = getattr(settings, f.name), _TYPES[name]
        if not isinstance(value, types) or (isinstance(value, bool) and name != "bool"):
            raise refuse(f.name, value, words)


def check_ranges(settings, ranges: Mapping[str, Range]) -> None:
    """Every number named in `ranges` inside its range."""
    for key, valid in ranges.items():
        value = getattr(settings, key)
        if value not in valid:
            raise refuse(key, value, str(valid))


def check_choices(settings, choices: Mapping[str, Iterable]) -> None:
    """Every setting named in `choices` one of its valid values."""
    for key, valid in choices.items():
        value = getattr(settings, key)
        if value not in tuple(valid):
            raise refuse(key, value, str(list(valid)))
