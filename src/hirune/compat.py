"""Old import paths keep working: hirune's modules moved into layer packages (the family
interface, 2026-12), and `import hirune.trainer` or `from hirune.samplers import ddim`
still finds what it named, with a DeprecationWarning that gives the new home.

`MOVED` maps each old module to its new one, and the names that changed to "module:name".
A name that no longer exists raises an AttributeError saying what replaced it."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED: dict[str, tuple[str, dict[str, str]]] = {
    "hirune.trainer": ("hirune.training", {
        "Run": "hirune.training.trainer:Trainer", "load_run": "hirune.training.loading:load",
        "check_config": "hirune.training.config:check_config",
        "make_grad_scaler": "hirune.training.trainer:make_grad_scaler"}),
    "hirune.presets": ("hirune.training.presets", {}),
    "hirune.generate": ("hirune.inference.generate", {
        "sample_run": "hirune.compat:sample_run", "class_labels": "hirune.families.diffusion_sampling:class_labels",
        "condition": "hirune.families.diffusion_sampling:condition"}),
    "hirune.editing": ("hirune.inference.editing", {"psnr": "hirune.metrics:psnr"}),
    "hirune.export": ("hirune.training.export", {}),
    "hirune.bench": ("hirune.training.speed", {}),
    "hirune.ema": ("hirune.training.ema", {}),
    "hirune.latent": ("hirune.families.latent", {}),
    "hirune.adversary": ("hirune.families.adversary", {}),
    "hirune.samplers": ("hirune.sampling", {"SamplerRun": "hirune.sampling.common:SamplerCall"}),
    **{f"hirune.samplers.{m}": (f"hirune.sampling.{m}", {}) for m in
       ("common", "ancestral", "ddim", "dpm_solver", "inversion", "langevin", "ode", "reverse_sde")},
    "hirune.timesteps": ("hirune.sampling.timesteps", {}),
    "hirune.integrators": ("hirune.sampling.integrators", {}),
    "hirune.guidance": ("hirune.sampling.guidance", {}),
    "hirune.likelihood": ("hirune.sampling.likelihood", {
        **{n: f"hirune.data.dequantize:{n}" for n in ("dequantize", "check_quantized", "discrete_nll")}}),
    "hirune.denoiser": ("hirune.process.denoiser", {}),
    "hirune.parameterization": ("hirune.process.parameterization", {}),
    "hirune.schedules": ("hirune.process.schedules", {}),
    "hirune.sde": ("hirune.process.sde", {}),
    "hirune.paths": ("hirune.process.paths", {}),
    "hirune.mixture": ("hirune.process.mixture", {}),
    "hirune.weighting": ("hirune.objectives.weighting", {}),
    "hirune.autoencoding": ("hirune.objectives.autoencoder", {}),
    "hirune.evaluator": ("hirune.metrics.evaluator", {}),
    "hirune.text": ("hirune.models.text", {}),
    "hirune.recompute": ("hirune.models.recompute", {}),
    "hirune.flows": ("hirune.models.normalizing_flow", {
        n: f"hirune.models.flow_layers:{n}" for n in ("MADE", "ActNorm", "AffineCoupling", "InvertibleConv1x1",
                                                     "MAFLayer", "Reverse", "Squeeze", "channel_mask",
                                                     "checkerboard_mask", "vector_mask")}),
    "hirune.flows.layers": ("hirune.models.flow_layers", {}),
    "hirune.flows.models": ("hirune.models.normalizing_flow", {}),
    "hirune.distributed.plan": ("hirune.distributed.planner", {
        n: f"hirune.training.measure:{n}" for n in ("activation_bytes", "saved_bytes", "measure",
                                                   "measure_peak_memory")}),
}
from .evaluation import GONE  # noqa: E402 -- names without a one-to-one successor


def _resolve(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


class _Alias(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # importing an old submodule (hirune.samplers.ddim) sets it on its parent; where the new
        # module has a name of its own there (the function ddim), that name must win, as it did
        if isinstance(value, _Alias) and hasattr(importlib.import_module(MOVED[self.__name__][0]), name):
            return
        super().__setattr__(name, value)

    def __call__(self, *args, **kwargs):
        # `import hirune.generate` (the old module) sets the package's attribute `generate` to this
        # module; a call of it means the function of that name in the new module, as before
        short = self.__name__.rpartition(".")[2]
        target = getattr(importlib.import_module(MOVED[self.__name__][0]), short, None)
        if not callable(target):
            raise TypeError(f"module {self.__name__!r} is not callable")
        return target(*args, **kwargs)

    def __getattr__(self, name: str):
        new, renamed = MOVED[self.__name__]
        if name in renamed:
            return _resolve(renamed[name])
        module = importlib.import_module(new)
        if hasattr(module, name):
            return getattr(module, name)
        if name in GONE:
            raise ImportError(f"{self.__name__}.{name} is gone with the family interface; use {GONE[name]}")
        raise AttributeError(f"module {self.__name__!r} (now {new}) has no attribute {name!r}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED:
            return None
        package = fullname in ("hirune.samplers", "hirune.flows")
        return importlib.machinery.ModuleSpec(fullname, self, is_package=package)

    def create_module(self, spec):
        return _Alias(spec.name)

    def exec_module(self, module):
        new = MOVED[module.__name__][0]
        module.__path__ = []  # old subpackages (hirune.samplers.ddim) resolve through this finder too
        warnings.warn(f"{module.__name__} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)


def sample_run(run, n: int, sampler=None, steps=None, spacing=None, seed: int = 0, label=None, trajectory=False,
               denoiser=None, per_class=False, guided_labels=False, temperature=1.0, prompt=None):
    """The old `hirune.generate.sample_run`: `hirune.generate` with its options by position."""
    from .inference.generate import generate

    return generate(run, n, sampler, steps, spacing, seed, label=label, trajectory=trajectory, denoiser=denoiser,
                    per_class=per_class, guided_labels=guided_labels, temperature=temperature, prompt=prompt)


def install() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
