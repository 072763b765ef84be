"""Optional packages in tests, found without importing them at collection.

Every pytest-xdist worker collects every test module, so a module-level
`pytest.importorskip("peft")` costs each worker the seconds of importing peft (and
transformers), diffusers likewise, whether or not that worker runs the module's tests.
`needs` finds the package on the path without importing it; `lazy` imports it at its first
attribute read, inside a test.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest


def needs(name: str, reason: str = "") -> pytest.MarkDecorator:
    """Skip where `name` is not installed (checked without importing it)."""
    return pytest.mark.skipif(importlib.util.find_spec(name) is None, reason=reason or f"needs {name}")


class lazy:
    """A module imported at its first attribute read: `diffusers = lazy("diffusers")`."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)
