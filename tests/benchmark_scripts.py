"""The benchmark scripts of `benchmarks/` as modules, for their tests (the folder is not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, module_name: str | None = None) -> ModuleType:
    """benchmarks/<name>.py loaded as a module (named `module_name`, default `name`)."""
    spec = importlib.util.spec_from_file_location(module_name or name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
