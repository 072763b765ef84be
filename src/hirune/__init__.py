"""hirune: diffusion and flow-based generative models on one shared, tested core.

    import hirune
    run = hirune.train(hirune.preset_config("ddpm-two-moons", {"steps": 500}))
    out, labels = hirune.generate("runs/ddpm-two-moons", 1000)

Layers, bottom up (each imports only from those below it; tests/test_layers.py holds the
order): `nn`; `process` (forward processes, parameterizations, the denoiser protocol);
`data`; `models` (networks); `sampling` (samplers, time grids, guidance, likelihood);
`metrics`; `objectives`; `evaluation`; `distributed`; `families` (one object per kind of
model); `training` (config, trainer, loop, loader, presets); `inference` (generate, edit);
`cli`.  See docs/ARCHITECTURE.md.
"""

from . import compat as _compat
from .process import (BETA_SCHEDULES, PREDICTIONS, PROCESSES, Coefficients, CondOT, Denoiser, DiscreteVP,
                      GaussianMixture, GaussianProcess, NoiseLevels, Prediction, RectifiedFlow, SubVPSDE, VESDE,
                      VPSDE, from_x0_eps, make_betas, make_process, rescale_zero_terminal_snr, to_x0_eps)
from .sampling import SAMPLERS, ddim_invert, get_sampler, sample
from .sampling.likelihood import ode_log_likelihood
from .sampling.timesteps import SPACINGS, respace, time_grid

__version__ = "0.1.0"

# the trained-run API, imported on first use (it pulls in the networks and the trainer)
_LAZY = {"TrainConfig": "training", "train": "training", "load": "training", "preset_config": "training",
         "PRESETS": "training", "generate": "inference", "guide": "inference", "edit": "inference",
         "invert": "inference", "FAMILIES": "families"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hirune' has no attribute {name!r}")


_compat.install()

__all__ = [
    "BETA_SCHEDULES", "FAMILIES", "PREDICTIONS", "PRESETS", "PROCESSES", "SAMPLERS", "SPACINGS", "Coefficients",
    "CondOT", "Denoiser", "DiscreteVP", "GaussianMixture", "GaussianProcess", "NoiseLevels", "Prediction",
    "RectifiedFlow", "SubVPSDE", "TrainConfig", "VESDE", "VPSDE", "ddim_invert", "edit", "from_x0_eps",
    "generate", "get_sampler", "guide", "invert", "load", "make_betas", "make_process", "ode_log_likelihood",
    "preset_config", "rescale_zero_terminal_snr", "respace", "sample", "time_grid", "to_x0_eps", "train",
]
