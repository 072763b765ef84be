"""One likelihood report for every family: dequantization, the discrete bound, flows
trained end to end, and `hirune eval --nll` on toys and images."""

from __future__ import annotations

import json
import math

import pytest
import torch

from hirune.cli import main
from hirune.data.dequantize import dequantize, discrete_nll
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer


@pytest.mark.parametrize("levels", [17, 256])
def test_dequantize_stays_in_its_bin(levels):
    k = torch.randint(0, levels, (4000, 1, 2, 2))
    x = 2 * k / (levels - 1) - 1
    y = dequantize(x, levels, torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.floor((y + 1) * levels / 2), k.float())   # the bin of k
    assert -1 <= float(y.min()) and float(y.max()) < 1
    centre = 2 * (k + 0.5) / levels - 1
    assert abs(float((y - centre).mean())) < 0.02 / levels                      # uniform in the bin


def test_discrete_bound_of_the_uniform_density_is_log_levels():
    """p uniform on [-1, 1]^D has log p = -D log 2; every value then has probability
    levels^-D, and the bound is tight: -log P = D log(levels)."""
    d, levels = 12, 17
    got = discrete_nll(torch.tensor([-d * math.log(2)], dtype=torch.float64), d, levels)
    torch.testing.assert_close(got, torch.tensor([d * math.log(levels)], dtype=torch.float64))


@pytest.mark.slow  # covered at tiny by a reproduce note; opt in with --runslow (the suite's 10-minute budget)
def test_flow_run_report_is_its_exact_log_prob(tmp_path):
    cfg = preset_config("maf-gaussian-mixture", {"steps": 400, "ckpt_every": 400, "sample_every": 0,
                                                 "out": str(tmp_path / "maf")})
    train(cfg, progress=False)
    run = load(cfg.out)
    assert run.name == "normalizing_flow"
    report = run.nll(2000)
    assert report["nll_method"].startswith("exact")
    # trained briefly, it is already within 0.3 nats of the true density's NLL
    assert report["nll_true_nats"] - 0.05 < report["nll_nats"] < report["nll_true_nats"] + 0.3, report
    from hirune.data import load_dataset

    x = load_dataset("gaussian_mixture", "test").data[:2000].double()
    with torch.no_grad():
        want = float(-run.model.double()(x).mean())
    assert abs(report["nll_nats"] - want) < 1e-5


def test_eval_nll_on_images_for_a_flow_and_a_flow_matching_run(tmp_path, capsys):
    for preset in ("glow-digits", "flow-digits"):
        out = tmp_path / preset
        assert main(["train", preset, "steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8",
                     f"out={out}"]) == 0
        capsys.readouterr()
        assert main(["eval", str(out), "--n", "20", "--steps", "2", "--nll", "6"]) == 0
        m = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert m["dequantization"] == "uniform, 17 levels" and m["nll_examples"] == 6
        assert 0 < m["bits_per_dim"] < 20 and m["bits_per_dim_stderr"] > 0
        assert math.isclose(m["bits_per_dim"], m["nll_nats"] / (64 * math.log(2)), rel_tol=1e-5)
    assert "Hutchinson" in m["nll_method"] and m["nll_nfe"] > 2


def test_flow_training_resumes_exactly_and_samples(tmp_path):
    base = {"steps": 6, "ckpt_every": 3, "sample_every": 6, "log_every": 1, "batch_size": 16, "num_samples": 16}
    a = train(preset_config("glow-digits", {**base, "out": str(tmp_path / "a")}), progress=False)
    train(preset_config("glow-digits", {**base, "out": str(tmp_path / "b")}), stop_after=3, progress=False)
    b = train(preset_config("glow-digits", {**base, "out": str(tmp_path / "b"), "resume": True}), progress=False)
    for (k, u), v in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(u, v), k
    assert (tmp_path / "a" / "samples" / "step_00000006.png").exists()


def test_flow_runs_refuse_guidance(tmp_path, capsys):
    out = tmp_path / "f"
    assert main(["train", "realnvp-two-moons", "steps=2", "ckpt_every=2", "sample_every=0", f"out={out}"]) == 0
    assert main(["sample", str(out), "--guidance", "cfg", "--scale", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "guidance and thresholding need a diffusion or flow-matching run; this is a normalizing_flow run" in capsys.readouterr().err
    run = load(out)
    with pytest.raises(ValueError, match="this is a normalizing flow"):
        run.generate(4, denoiser=run.model)
    with pytest.raises(ValueError, match="unconditional"):
        run.generate(4, label=1)
    # a flow network is trained by the normalizing-flow family only, which has no diffusion objective
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['objective'\] for family 'normalizing_flow'"):
        train(preset_config("glow-digits", {"objective": "regression", "out": str(tmp_path / "g")}))
    with pytest.raises(ValueError, match=r"family 'diffusion' trains model in .*, not 'normalizing_flow'"):
        Trainer(preset_config("glow-digits", {"family": "diffusion", "out": str(tmp_path / "g")}))
    with pytest.raises(ValueError,
                       match=r"family 'normalizing_flow' trains model in \['normalizing_flow'\], not 'mlp'"):
        Trainer(preset_config("glow-digits", {"model": "mlp", "out": str(tmp_path / "g")}))


def test_bad_likelihood_inputs_are_named(tmp_path, capsys):
    """Data off the dequantization grid, a flow that cannot split, NLL of a classifier."""
    from hirune.models.normalizing_flow import FlowConfig
    from hirune.data.dequantize import check_quantized

    grid = 2 * torch.randint(0, 17, (8, 1, 4, 4)) / 16 - 1
    check_quantized(grid, 17)
    with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
        check_quantized(grid * 1.5, 17)
    with pytest.raises(ValueError, match="already dequantized"):
        check_quantized(dequantize(grid, 17, torch.Generator().manual_seed(0)), 17)
    with pytest.raises(ValueError, match="wrong levels"):
        check_quantized(grid, 256)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        FlowConfig("realnvp", (1,))
    out = tmp_path / "c"
    assert main(["train", "classifier-digits", "steps=1", "ckpt_every=1", "batch_size=8", f"out={out}"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--nll", "4"]) == 2
    assert "no density" in capsys.readouterr().err


def test_float_npz_images_are_continuous(tmp_path):
    """8-bit arrays get 256 dequantization levels; floats off that grid get none."""
    import numpy as np

    from hirune.data import load_dataset

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "u8.npz", images=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "f.npz", images=rng.random((20, 8, 8)).astype(np.float32))
    assert load_dataset(str(tmp_path / "u8.npz")).levels == 256
    assert load_dataset(str(tmp_path / "f.npz")).levels is None
