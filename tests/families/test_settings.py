"""Checking settings (`families/settings.py`): each field's type, from string annotations or
real types, numeric ranges and how they read in a message."""

from __future__ import annotations

import dataclasses as dc

import pytest

from hirune.families.settings import Range, check_ranges, check_types


def test_range_and_type_checks_of_a_family_without_postponed_annotations():
    """A family written outside hirune may annotate its Config with real types (int) rather
    than strings ("int"): the checks read both."""
    Section = dc.make_dataclass("Section", [("k", int, 2), ("gain", float, 1.0)])
    check_types(Section())
    with pytest.raises(ValueError, match=r"k='2' is not valid; valid: an integer"):
        check_types(Section(k="2"))
    with pytest.raises(ValueError, match=r"gain=-1.0 is not valid; valid: a finite number > 0 \(the gain\)"):
        check_ranges(Section(gain=-1.0), {"gain": Range(0, low_open=True, hint="the gain")})
    assert str(Range(1, integer=True)) == "an integer >= 1" and str(Range(0, 1, high_open=True)) == \
        "a finite number in [0, 1)" and 1.0 not in Range(0, 1, high_open=True) and True not in Range(0)
