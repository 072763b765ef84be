"""The denoiser protocol and the time-embedding precision guard."""

from __future__ import annotations

import pytest
import torch

import hirune as H
from hirune.process.denoiser import time_batch
from hirune.nn import timestep_embedding


def test_zero_terminal_snr_refuses_eps_and_score():
    ztsnr = H.DiscreteVP("linear", zero_terminal_snr=True)
    for process in (ztsnr, H.RectifiedFlow(), H.CondOT()):
        for prediction in ("eps", "score"):
            with pytest.raises(ValueError, match="zero terminal SNR"):
                H.Denoiser(lambda x, t: x, process, prediction)
        for prediction in ("x0", "v", "velocity"):
            H.Denoiser(lambda x, t: x, process, prediction)
    H.Denoiser(lambda x, t: x, H.DiscreteVP("linear"), "eps")  # fine with terminal SNR > 0


def test_network_gets_float32_times_of_batch_shape():
    seen = {}

    def model(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    D = H.Denoiser(model, H.DiscreteVP("linear"), "eps")
    x = torch.randn(5, 3, dtype=torch.bfloat16)
    D(x, 999)
    assert seen["t"].dtype == torch.float32 and seen["t"].shape == (5,)
    assert float(seen["t"][0]) == 999.0
    assert time_batch(0.1234567890123, torch.zeros(2, 1, dtype=torch.float64)).dtype == torch.float64
    assert float(time_batch(0.1234567890123, torch.zeros(2, 1, dtype=torch.float64))[0]) == 0.1234567890123


def test_timestep_embedding_stays_float32_under_bf16_autocast():
    t = torch.tensor([999.0, 1000.0])
    assert torch.tensor(999.0, dtype=torch.bfloat16).item() == 1000.0  # the pitfall
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = timestep_embedding(t, 64)
    assert emb.dtype == torch.float32
    assert not torch.allclose(emb[0], emb[1])
    # a bf16 time embedding would not separate them
    emb_bf16 = timestep_embedding(t.to(torch.bfloat16).float(), 64)
    assert torch.allclose(emb_bf16[0], emb_bf16[1])


def test_learned_variance_output_must_have_twice_the_channels():
    D = H.Denoiser(lambda x, t: x, H.DiscreteVP("cosine"), "eps", learned_variance=True)
    with pytest.raises(ValueError, match="channels"):
        D(torch.randn(2, 3, 4, 4), 10)
    D2 = H.Denoiser(lambda x, t: torch.cat([x, torch.ones_like(x)], 1), H.DiscreteVP("cosine"),
                    "eps", learned_variance=True)
    pred = D2(torch.randn(2, 3, 4, 4), 10)
    assert pred.x0.shape == (2, 3, 4, 4) and torch.all(pred.var_frac == 1)


def test_clip_x0_keeps_eps_consistent():
    process = H.DiscreteVP("linear")
    D = H.Denoiser(lambda x, t: torch.full_like(x, 5.0), process, "x0", clip_x0=(-1.0, 1.0))
    x = torch.randn(4, 2, dtype=torch.float64)
    pred = D(x, 500)
    assert pred.x0.abs().max() <= 1
    c = process.coefficients(500, x)
    torch.testing.assert_close(c.alpha * pred.x0 + c.sigma * pred.eps, x)


def test_coefficients_shapes_and_bad_times():
    process = H.VPSDE()
    x = torch.zeros(3, 2, 4, 4)
    c = process.coefficients(torch.tensor([0.1, 0.5, 0.9]), x)
    assert c.alpha.shape == (3, 1, 1, 1)
    assert process.coefficients(0.5, x).alpha.shape == ()
    with pytest.raises(ValueError, match="scalar or a"):
        process.coefficients(torch.zeros(3, 1), x)


def test_make_process_names():
    assert isinstance(H.make_process("ve"), H.VESDE)
    with pytest.raises(ValueError, match="valid"):
        H.make_process("vpsde")
