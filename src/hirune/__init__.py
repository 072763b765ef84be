"""hirune: diffusion and flow-based generative models on one shared, tested core.

Layers (bottom up): forward processes (`process`, `schedules`, `sde`, `paths`) and
prediction targets (`parameterization`); the denoiser protocol (`denoiser`); time grids
(`timesteps`); samplers (`samplers`) and likelihoods (`likelihood`) over the protocol.
See docs/ARCHITECTURE.md.
"""

from .denoiser import Denoiser, Prediction
from .likelihood import ode_log_likelihood
from .mixture import GaussianMixture
from .parameterization import PREDICTIONS, from_x0_eps, to_x0_eps
from .paths import CondOT, RectifiedFlow
from .process import Coefficients, GaussianProcess
from .samplers import SAMPLERS, ddim_invert, get_sampler, sample
from .schedules import BETA_SCHEDULES, DiscreteVP, make_betas, rescale_zero_terminal_snr
from .sde import VESDE, NoiseLevels, SubVPSDE, VPSDE
from .timesteps import SPACINGS, respace, time_grid

__version__ = "0.1.0"

PROCESSES = {
    "ddpm": lambda **kw: DiscreteVP(**kw),
    "vp": lambda **kw: VPSDE(**kw),
    "subvp": lambda **kw: SubVPSDE(**kw),
    "ve": lambda **kw: VESDE(**kw),
    "ncsn": lambda **kw: NoiseLevels(**kw),
    "rectified_flow": lambda **kw: RectifiedFlow(**kw),
    "cond_ot": lambda **kw: CondOT(**kw),
}


def make_process(name: str, **kwargs) -> GaussianProcess:
    """A forward process by name (see `PROCESSES`)."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid: {sorted(PROCESSES)}")
    return PROCESSES[name](**kwargs)


__all__ = [
    "BETA_SCHEDULES", "PREDICTIONS", "PROCESSES", "SAMPLERS", "SPACINGS", "Coefficients",
    "CondOT", "Denoiser", "DiscreteVP", "GaussianMixture", "GaussianProcess", "NoiseLevels", "Prediction",
    "RectifiedFlow", "SubVPSDE", "VESDE", "VPSDE", "ddim_invert", "from_x0_eps", "get_sampler",
    "make_betas", "make_process", "ode_log_likelihood", "rescale_zero_terminal_snr", "respace",
    "sample", "time_grid", "to_x0_eps",
]
