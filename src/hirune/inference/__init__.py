"""Using trained runs: samples (`generate`, the one entry point; `guide` for guided
denoisers) and real-image inversion and editing (`editing`).  Runs load light through
`hirune.training.loading.load`, re-exported here."""

from ..training.loading import load
from .editing import edit, invert, regenerate
from .generate import GUIDANCE, generate, guide

__all__ = ["GUIDANCE", "edit", "generate", "guide", "invert", "load", "regenerate"]
