"""Time grids: discrete spacings (leading / trailing / linspace), Improved DDPM respacing,
the continuous spacings (uniform / karras / logsnr) and grid validation.

Exact agreement of the discrete spacings with diffusers is in test_oracle_diffusers.py;
here are their defining properties, for many (T, n) pairs.
"""

from __future__ import annotations

import math

import pytest
import torch

from hirune import CondOT, DiscreteVP, RectifiedFlow, SubVPSDE, VESDE, VPSDE, respace, time_grid
from hirune.sampling.timesteps import CONTINUOUS_SPACINGS, DISCRETE_SPACINGS, SPACINGS, check_grid

f64 = torch.float64

# (T, n) pairs: every n for small T, a spread for T = 1000 and an odd T.
PAIRS = ([(T, n) for T in (2, 3, 7, 10, 64) for n in range(1, T + 1)]
         + [(1000, n) for n in (1, 2, 3, 7, 10, 20, 25, 33, 48, 50, 61, 100, 250, 333, 500, 999, 1000)]
         + [(997, n) for n in (1, 10, 50, 997)])


def _is_valid_discrete(ts: torch.Tensor, T: int, n: int) -> None:
    assert ts.dtype == f64 and ts.shape == (n,)
    assert (ts == ts.round()).all(), "integer timesteps"
    assert ts.min() >= 0 and ts.max() <= T - 1
    assert (ts.diff() < 0).all(), "strictly decreasing"


@pytest.mark.parametrize("spacing", DISCRETE_SPACINGS)
def test_discrete_grids_valid(spacing):
    for T, n in PAIRS:
        proc = _vp(T)
        ts = time_grid(proc, n, spacing)
        _is_valid_discrete(ts, T, n)
        check_grid(proc, ts)


_VP_CACHE: dict[int, DiscreteVP] = {}


def _vp(T: int) -> DiscreteVP:
    if T not in _VP_CACHE:
        _VP_CACHE[T] = DiscreteVP("linear", T=T)
    return _VP_CACHE[T]


def test_leading_spacing_definition():
    """DDIM paper / Stable Diffusion: 0, k, 2k, ..., (n-1)k with k = T // n, reversed."""
    for T, n in PAIRS:
        ts = time_grid(_vp(T), n, "leading")
        k = T // n
        assert ts.flip(0).tolist() == [float(i * k) for i in range(n)]
        assert ts[-1] == 0


def test_trailing_spacing_definition():
    """Lin et al. 2023: round(T - i T/n) - 1, i = 0..n-1; starts at the last step T - 1."""
    for T, n in PAIRS:
        ts = time_grid(_vp(T), n, "trailing")
        assert ts[0] == T - 1
        exact = torch.tensor([T - i * T / n - 1 for i in range(n)], dtype=f64)
        assert ((ts - exact).abs() <= 0.5 + 1e-9).all(), "nearest integer (ties either way)"
        if T % n == 0:  # integer stride: exactly T-1, T-1-T/n, ...
            assert ts.tolist() == [float(T - 1 - i * (T // n)) for i in range(n)]


def test_linspace_spacing_definition():
    """n integers spread over [0, T-1], both ends included (for n >= 2)."""
    for T, n in PAIRS:
        ts = time_grid(_vp(T), n, "linspace")
        exact = torch.tensor([(T - 1) * (n - 1 - i) / max(n - 1, 1) for i in range(n)], dtype=f64)
        assert ((ts - exact).abs() <= 0.5 + 1e-9).all()
        if n >= 2:
            assert ts[0] == T - 1 and ts[-1] == 0


@pytest.mark.parametrize("n", [1, 4, 10, 50, 1000])
def test_trailing_starts_at_pure_noise_for_zero_terminal_snr(n):
    proc = DiscreteVP("scaled_linear", zero_terminal_snr=True)
    ts = time_grid(proc, n, "trailing")
    assert float(proc.alpha(ts[0])) == 0.0 and float(proc.sigma(ts[0])) == 1.0
    # leading spacing misses the last step (its first time (n-1) * (T//n) < T-1 unless n = T)
    if 1 < n < 1000:
        lead = time_grid(proc, n, "leading")
        assert lead[0] < 999 and float(proc.alpha(lead[0])) > 0


def test_default_spacing():
    assert torch.equal(time_grid(_vp(1000), 10), time_grid(_vp(1000), 10, "trailing"))
    assert torch.equal(time_grid(VPSDE(), 10), time_grid(VPSDE(), 10, "uniform"))


@pytest.mark.parametrize("proc", [VPSDE(), VESDE(), RectifiedFlow(), DiscreteVP("linear")], ids=repr)
def test_uniform_spacing(proc):
    ts = time_grid(proc, 11, "uniform")
    torch.testing.assert_close(ts, torch.linspace(proc.t_max, proc.t_min, 11, dtype=f64), rtol=0, atol=0)
    check_grid(proc, ts)


# ----------------------------------------------------------------------------------------
# Step-count and spacing errors
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", DISCRETE_SPACINGS)
def test_discrete_too_many_steps(spacing):
    with pytest.raises(ValueError, match="1000"):
        time_grid(_vp(1000), 1001, spacing)
    time_grid(_vp(1000), 1000, spacing)  # exactly T is fine


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [0, -3, 10.0, 2.5, "10", True, None])
def test_bad_step_counts(spacing, steps):
    proc = _vp(1000) if spacing in DISCRETE_SPACINGS else VPSDE()
    with pytest.raises(ValueError, match="steps"):
        time_grid(proc, steps, spacing)


@pytest.mark.parametrize("proc", [VPSDE(), SubVPSDE(), VESDE(), RectifiedFlow(), CondOT()], ids=repr)
@pytest.mark.parametrize("spacing", DISCRETE_SPACINGS)
def test_discrete_spacing_on_continuous_process(proc, spacing):
    with pytest.raises(ValueError) as e:
        time_grid(proc, 10, spacing)
    msg = str(e.value)
    assert spacing in msg
    for valid in CONTINUOUS_SPACINGS:
        assert valid in msg


def test_unknown_spacing_lists_valid_ones():
    for proc in (_vp(1000), VPSDE()):
        with pytest.raises(ValueError) as e:
            time_grid(proc, 10, "quadratic")
        assert "quadratic" in str(e.value)
        for valid in SPACINGS:
            assert repr(valid) in str(e.value)


# ----------------------------------------------------------------------------------------
# Karras and log-SNR spacings
# ----------------------------------------------------------------------------------------

KARRAS_PROCS = [DiscreteVP("linear"), DiscreteVP("cosine"), VPSDE(), SubVPSDE(), VESDE(),
                VESDE(sigma_min=0.002, sigma_max=80.0)]


def _check_karras(proc, ts, lo, hi, rho):
    s = proc.edm_sigma(ts)
    torch.testing.assert_close(s[[0, -1]], torch.tensor([hi, lo], dtype=f64), rtol=1e-9, atol=0)
    r = s ** (1 / rho)
    torch.testing.assert_close(r.diff(), torch.full_like(r.diff(), (lo ** (1 / rho) - hi ** (1 / rho)) / (len(ts) - 1)),
                               rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("proc", KARRAS_PROCS, ids=repr)
@pytest.mark.parametrize("rho", [7.0, 3.0])
def test_karras_default_range(proc, rho):
    ts = time_grid(proc, 12, "karras", rho=rho)
    check_grid(proc, ts)
    assert abs(float(ts[0]) - proc.t_max) < 1e-9 * max(1, proc.t_max)
    assert abs(float(ts[-1]) - proc.t_min) < 1e-9 * max(1, proc.t_max)
    _check_karras(proc, ts, float(proc.edm_sigma(proc.t_min)), float(proc.edm_sigma(proc.t_max)), rho)


@pytest.mark.parametrize("proc", KARRAS_PROCS, ids=repr)
def test_karras_overrides(proc):
    lo = 2 * float(proc.edm_sigma(proc.t_min))
    hi = min(40.0, 0.5 * float(proc.edm_sigma(proc.t_max)))
    ts = time_grid(proc, 9, "karras", sigma_min=lo, sigma_max=hi)
    check_grid(proc, ts)
    _check_karras(proc, ts, lo, hi, 7.0)


def test_karras_check_rejects_wrong_rho():
    """Harness: a grid built with rho = 3 does not pass the rho = 7 spacing check."""
    proc = VPSDE()
    ts = time_grid(proc, 12, "karras", rho=3.0)
    lo, hi = float(proc.edm_sigma(proc.t_min)), float(proc.edm_sigma(proc.t_max))
    with pytest.raises(AssertionError):
        _check_karras(proc, ts, lo, hi, 7.0)


@pytest.mark.parametrize("proc", KARRAS_PROCS + [CondOT()], ids=repr)
def test_logsnr_evenly_spaced(proc):
    kw = {"sigma_max": 80.0} if isinstance(proc, CondOT) else {}
    ts = time_grid(proc, 10, "logsnr", **kw)
    check_grid(proc, ts)
    lam = proc.log_snr(ts)
    torch.testing.assert_close(lam.diff(), torch.full_like(lam.diff(), float(lam[1] - lam[0])), rtol=1e-8, atol=1e-10)
    assert (lam.diff() > 0).all()
    hi = kw.get("sigma_max", float(proc.edm_sigma(proc.t_max)))
    torch.testing.assert_close(lam[0], torch.tensor(-2 * math.log(hi), dtype=f64), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spacing", ["karras", "logsnr"])
@pytest.mark.parametrize("proc", [RectifiedFlow(), CondOT()], ids=repr)
def test_flows_need_sigma_max(proc, spacing):
    """sigma/alpha is infinite at t = 1 for flows: the spacing needs an explicit sigma_max."""
    with pytest.raises(ValueError, match="sigma_max"):
        time_grid(proc, 10, spacing)


def test_cond_ot_karras_with_sigma_max():
    proc = CondOT()
    ts = time_grid(proc, 10, "karras", sigma_max=80.0)
    check_grid(proc, ts)
    _check_karras(proc, ts, 1e-4, 80.0, 7.0)


def test_rectified_flow_karras_needs_both_bounds():
    """Rectified flow has sigma/alpha = 0 at t = 0, so Karras needs sigma_min as well."""
    proc = RectifiedFlow()
    with pytest.raises(ValueError, match="sigma_min"):
        time_grid(proc, 10, "karras", sigma_max=80.0)
    ts = time_grid(proc, 10, "karras", sigma_max=80.0, sigma_min=0.002)
    check_grid(proc, ts)
    _check_karras(proc, ts, 0.002, 80.0, 7.0)
    torch.testing.assert_close(ts[0], torch.tensor(80 / 81, dtype=f64), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kw", [{"sigma_min": 5.0, "sigma_max": 1.0}, {"sigma_min": 0.0},
                                {"sigma_max": float("inf")}, {"sigma_min": -1.0}])
def test_karras_bad_bounds(kw):
    with pytest.raises(ValueError):
        time_grid(VPSDE(), 10, "karras", **kw)


def test_karras_override_outside_process_range_is_rejected_or_valid():
    proc = DiscreteVP("linear")  # sigma/alpha spans [0.01, 157.4]
    try:
        ts = time_grid(proc, 10, "karras", sigma_max=1000.0)
    except ValueError:
        return
    check_grid(proc, ts)
    assert abs(float(proc.edm_sigma(ts[0])) - 1000.0) < 1e-6


# ----------------------------------------------------------------------------------------
# Improved DDPM respacing
# ----------------------------------------------------------------------------------------


def _improved_ddpm_space_timesteps(num_timesteps, section_counts):
    """`space_timesteps` of openai/improved-diffusion (respace.py), verbatim in substance."""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired_count = int(section_counts[len("ddim"):])
            for i in range(1, num_timesteps):
                if len(range(0, num_timesteps, i)) == desired_count:
                    return set(range(0, num_timesteps, i))
            raise ValueError(f"cannot create exactly {num_timesteps} steps with an integer stride")
        section_counts = [int(x) for x in section_counts.split(",")]
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(f"cannot divide section of {size} steps into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        taken_steps = []
        for _ in range(section_count):
            taken_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        all_steps += taken_steps
        start_idx += size
    return set(all_steps)


@pytest.mark.parametrize("n,stride", [(50, 20), (25, 40), (10, 100), (7, 143), (100, 10), (1000, 1)])
def test_respace_ddim(n, stride):
    ts = respace(1000, f"ddim{n}")
    assert ts.dtype == f64 and len(ts) == n
    assert (ts.diff() == -stride).all(), "one constant integer stride"
    assert ts[-1] == 0
    assert ts.tolist() == sorted(_improved_ddpm_space_timesteps(1000, f"ddim{n}"), reverse=True)


def test_respace_ddim_impossible_count():
    with pytest.raises(ValueError):
        respace(1000, "ddim400")  # stride 2 gives 500, stride 3 gives 334


@pytest.mark.parametrize("T", [300, 1000, 1001])
def test_respace_section_semantics(T):
    counts = [10, 15, 20]
    for spec in ("10,15,20", counts):
        ts = respace(T, spec)
        assert ts.dtype == f64 and (ts.diff() < 0).all() and len(ts) == 45
        kept = sorted(int(t) for t in ts)
        size, extra = divmod(T, 3)
        start = 0
        for i, c in enumerate(counts):
            length = size + (1 if i < extra else 0)
            section = [t for t in kept if start <= t < start + length]
            assert len(section) == c, "count per section"
            assert section[0] == start, "first element of each section kept"
            assert section[-1] == start + length - 1, "and its last (count > 1)"
            stride = (length - 1) / (c - 1)
            gaps = [b - a for a, b in zip(section, section[1:])]
            assert all(math.floor(stride) <= g <= math.ceil(stride) for g in gaps), "even stride"
            start += length


SECTION_SPECS = ["10", "25", "50", "100", "250", "10,15,20", "50,50", "27", "30,30,30",
                 "100,50,25", "5,10,15,20", "1,1,1", "1", "1000", "334,333,333"]


@pytest.mark.parametrize("spec", SECTION_SPECS)
def test_respace_matches_improved_ddpm_reference(spec):
    ref = sorted(_improved_ddpm_space_timesteps(1000, spec), reverse=True)
    assert respace(1000, spec).tolist() == ref


@pytest.mark.parametrize("T,spec", [(100, "15"), (50, "25"), (1000, "21"), (4000, "31")])
def test_respace_matches_reference_at_rounding_ties(T, spec):
    assert respace(T, spec).tolist() == sorted(_improved_ddpm_space_timesteps(T, spec), reverse=True)


@pytest.mark.parametrize("spec", ["10,501", "1001", "0,10"])
def test_respace_bad_counts(spec):
    # (a count above its section's length; "0,10": hirune refuses empty sections, which
    # Improved DDPM would silently skip)
    with pytest.raises(ValueError):
        respace(1000, spec)


def test_respaced_grid_is_usable():
    proc = _vp(1000)
    check_grid(proc, respace(1000, "10,15,20"))
    check_grid(proc, respace(1000, "ddim50"))


# ----------------------------------------------------------------------------------------
# check_grid
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid,match", [
    ([900.0, 950.0, 0.0], "decreasing"),
    ([900.0, 900.0, 0.0], "decreasing"),
    ([0.0, 500.0, 900.0], "decreasing"),
    ([1000.0, 500.0, 0.0], "leaves"),
    ([999.0, 500.0, -1.0], "leaves"),
    ([999.0, float("nan"), 0.0], "finite"),
    ([float("inf"), 500.0], "finite"),
    ([[999.0, 500.0], [400.0, 0.0]], "1-D"),
    ([], "1-D"),
])
def test_check_grid_rejects(grid, match):
    with pytest.raises(ValueError, match=match):
        check_grid(_vp(1000), torch.tensor(grid, dtype=f64))


def test_check_grid_rejects_outside_continuous_range():
    with pytest.raises(ValueError, match="leaves"):
        check_grid(VPSDE(), torch.tensor([1.0, 0.5, 0.0], dtype=f64))  # t_min = 1e-3
    with pytest.raises(ValueError, match="leaves"):
        check_grid(RectifiedFlow(), torch.tensor([1.5, 0.5], dtype=f64))
    with pytest.raises(ValueError, match="1-D"):
        check_grid(VPSDE(), torch.tensor(0.5, dtype=f64))


def test_check_grid_accepts_and_returns_float64():
    out = check_grid(_vp(1000), [999, 500, 3])
    assert out.dtype == f64 and out.tolist() == [999.0, 500.0, 3.0]
    assert check_grid(_vp(1000), torch.tensor([7.0])).tolist() == [7.0]  # one entry
    inc = check_grid(VPSDE(), torch.tensor([1e-3, 0.5, 1.0], dtype=f64), increasing=True)
    assert inc.tolist() == [1e-3, 0.5, 1.0]
    with pytest.raises(ValueError, match="increasing"):
        check_grid(VPSDE(), torch.tensor([1.0, 0.5]), increasing=True)


@pytest.mark.parametrize("proc", KARRAS_PROCS + [RectifiedFlow(), CondOT()], ids=repr)
def test_every_spacing_passes_check_grid(proc):
    spacings = DISCRETE_SPACINGS + CONTINUOUS_SPACINGS if proc.discrete else CONTINUOUS_SPACINGS
    kw = {"sigma_max": 80.0, "sigma_min": 0.002} if not math.isfinite(float(proc.edm_sigma(proc.t_max))) else {}
    for spacing in spacings:
        for n in (1, 2, 5, 30):
            extra = kw if spacing in ("karras", "logsnr") else {}
            ts = time_grid(proc, n, spacing, **extra)
            assert len(ts) == n
            check_grid(proc, ts)
