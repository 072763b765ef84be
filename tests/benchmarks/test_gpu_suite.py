"""benchmarks/gpu_suite.py runs every row on the CPU at toy sizes, so a device session finds it
working: the JSON holds each row's figures, the ratios are the rates' ratios, the UNet row's
network is the DDPM-CIFAR size the issue's anchors name, and the report prints them."""

from __future__ import annotations

import json

import pytest
import torch

from benchmark_scripts import load_benchmark

gpu_suite = load_benchmark("gpu_suite")


def test_the_unet_row_is_the_ddpm_cifar_network_and_diffusers_twin_has_its_size():
    from hirune.models import build_model
    from hirune.training.speed import diffusers_twin

    with torch.device("meta"):
        model = build_model("unet", in_channels=3, **gpu_suite.DDPM_CIFAR)
        twin = diffusers_twin(model.config, 32)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in twin.parameters()) == 35_746_307        # DDPM's 35.7 M
    with torch.device("meta"):   # FiLM conditioning (scale-shift) would be 38.3 M: the anchor's size is caught
        film = build_model("unet", in_channels=3, **{**gpu_suite.DDPM_CIFAR, "use_scale_shift_norm": True})
    assert sum(p.numel() for p in film.parameters()) > 1.05 * count


def test_every_row_at_tiny_size_writes_its_figures(tmp_path, capsys):
    assert gpu_suite.main(["--tiny", "--rows", "peak", "dit", "unet", "ddim", "memory", "syncs",
                           "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_suite.json").read_text())["results"]
    assert results["peak"]["matmul_tflops"] > 0
    (dit,) = results["dit"]
    rates = {r["contestant"]: r["images_per_s"] for r in dit["rows"]}
    assert set(rates) == {"hirune", "diffusers"}
    hirune = next(r for r in dit["rows"] if r["contestant"] == "hirune")
    assert hirune["ratio_vs_diffusers"] == pytest.approx(rates["hirune"] / rates["diffusers"])
    assert hirune["mfu_matmul"] == pytest.approx(hirune["tflops"] / results["peak"]["matmul_tflops"])
    assert dit["max_rel_diff_fp32"] < 1e-4                    # the twin computes hirune's function
    assert [r["mode"] for r in results["unet"]] == ["eager", gpu_suite.PLAIN]
    for unet in results["unet"]:
        c = unet["contestants"]
        assert unet["ratio"] == pytest.approx(c["hirune"]["images_per_s"] / c["diffusers UNet2DModel"]["images_per_s"])
    ddim = {(r["contestant"], r["mode"]): r for r in results["ddim"]["rows"]}
    assert set(ddim) == {("hirune", "eager"), ("diffusers", "eager")} and all("images_per_s" in r for r in ddim.values())
    assert "skipped" in results["memory"]                     # CUDA only
    assert set(results["syncs"]) == {"unet train step", "dit train step", "ddim sampling"}
    assert all(r["ok"] is None for r in results["syncs"].values())   # ran; checked on a GPU only
    printed = capsys.readouterr().out
    assert "| T/2 | hirune | eager |" in printed and "DDIM-5, batch 4" in printed


@pytest.mark.slow
def test_the_strategies_row_trains_under_torchrun(tmp_path):
    assert gpu_suite.main(["--tiny", "--rows", "strategies", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "gpu_suite.json").read_text())["results"]
    assert results["strategies"]["ddp"]["ok"], results["strategies"]
