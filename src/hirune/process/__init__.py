"""The forward processes and what sits directly on them.

    base.py              GaussianProcess: x_t = alpha(t) x_0 + sigma(t) eps, its SDE, posterior, prior
    schedules.py         discrete DDPM schedules (DiscreteVP)
    sde.py               the score SDEs (VP, sub-VP, VE) and NCSN's noise levels
    paths.py             flow-matching paths (rectified flow, conditional OT)
    parameterization.py  eps | x0 | v | score | velocity <-> (x0, eps)
    denoiser.py          the denoiser protocol: Denoiser, Prediction
    thresholding.py      static / dynamic thresholding of the x_0 estimate (Imagen)
    mixture.py           Gaussian mixtures with exact scores (the tests' ground truth)

`make_process(name, **config)` builds one by the names of `PROCESSES`.
"""

from .base import Coefficients, GaussianProcess, TimeLike
from .denoiser import Denoiser, Prediction
from .mixture import GaussianMixture
from .parameterization import PREDICTIONS, from_x0_eps, to_x0_eps
from .paths import CondOT, RectifiedFlow
from .schedules import BETA_SCHEDULES, DiscreteVP, make_betas, rescale_zero_terminal_snr
from .sde import VESDE, NoiseLevels, SubVPSDE, VPSDE
from .thresholding import THRESHOLDS, Threshold, make_threshold

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
    """A forward process by name (see `PROCESSES`); options it does not take are a ValueError."""
    if name not in PROCESSES:
        raise ValueError(f"unknown process {name!r}; valid: {sorted(PROCESSES)}")
    try:
        return PROCESSES[name](**kwargs)
    except TypeError as e:  # an option the process (or its schedule) does not have
        raise ValueError(f"process {name!r} does not take the options {kwargs}: {e}") from None


__all__ = ["BETA_SCHEDULES", "PREDICTIONS", "PROCESSES", "Coefficients", "CondOT", "Denoiser", "DiscreteVP",
           "GaussianMixture", "GaussianProcess", "NoiseLevels", "Prediction", "RectifiedFlow", "SubVPSDE",
           "THRESHOLDS", "Threshold", "TimeLike", "VESDE", "VPSDE", "from_x0_eps", "make_betas", "make_process",
           "make_threshold", "rescale_zero_terminal_snr", "to_x0_eps"]
