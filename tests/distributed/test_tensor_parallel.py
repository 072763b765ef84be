"""Tensor and sequence parallelism (DTensor, gloo on this CPU): a model split over 2 ranks by
its plan computes what one process computes -- outputs, gradients, AdamW steps -- for DiT and
U-ViT, with and without sp; `hirune train` on a 2 x 2 (dp, tp) mesh equals one process with the
global batch, and its checkpoints resume on 1 process and on 4 x 1; sp without the sum of the
norms' gradients is caught; per-rank bytes fall with tp; bad layouts are refused by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hirune.distributed.runtime import World
from hirune.training import preset_config, train

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import _ok, _overrides, assert_same_run, losses, torchrun  # noqa: E402

TP_WORKER = Path(__file__).resolve().parents[1] / "tp_worker.py"
DIT = ["dit-digits", "batch_size=16", "steps=4", "log_every=1", "ckpt_every=2", "sample_every=0", "lr=0.003",
       "warmup=0", "lr_schedule=constant", "ema_decay=0.9", "model_config={\"hidden_size\": 64, \"depth\": 2, "
       "\"num_heads\": 4, \"qk_norm\": true}"]
UVIT = ["uvit-digits", "batch_size=16", "steps=4", "log_every=1", "ckpt_every=2", "sample_every=0", "lr=0.003",
        "warmup=0", "lr_schedule=constant", "ema_decay=0.9"]


def single(items: list[str], out: Path, *extra: str):
    return train(preset_config(items[0], {**_overrides(items[1:] + list(extra)), "out": str(out)}), progress=False)


@pytest.fixture(scope="module")
def split_modules(tmp_path_factory):
    """tests/tp_worker.py's measurements on 2 ranks (one launch for every module-level check)."""
    out = tmp_path_factory.mktemp("tp")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(TP_WORKER), str(out)], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    _ok(proc)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("case", ["dit", "dit-sp", "uvit", "uvit-sp", "dalle", "cogvideox"])
def test_split_model_equals_one_process(split_modules, case):
    """Outputs and gradients to float32 rounding (relative to their largest), weights after three
    clipped AdamW steps to 1e-3 of their size (Adam turns the rounding of near-zero gradients into
    whole steps); DALL-E with dropout 0.1 on attention and MLP: the same masks on any layout."""
    for rank in split_modules:
        rel = rank[case]["relative"]
        assert rel["output"] < 1e-5 and rel["gradient"] < 5e-5 and rel["weight"] < 1e-3, rel


def test_dropout_drawn_per_rank_is_caught(split_modules):
    """Harness: if each rank draws the attention dropout mask for its own heads, the masks
    depend on the layout and the split model no longer equals one process."""
    rel = [rank["dalle-local-dropout"]["relative"] for rank in split_modules]
    assert all(r["output"] > 1e-3 for r in rel), rel


def test_sequence_parallel_without_the_norm_gradient_sum_is_caught(split_modules):
    """Harness: under sp each rank's norms see only its tokens; without the all-reduce of their
    gradients they train apart, and the comparison fails by far."""
    rel = [rank["uvit-sp-broken"]["relative"] for rank in split_modules]
    assert all(r["gradient"] > 1e-3 and r["weight"] > 1e-2 for r in rel), rel


@pytest.mark.parametrize("case", ["dit", "uvit"])
def test_per_rank_bytes_fall_with_tp(split_modules, case):
    """Measured on each rank: the split layers hold exactly 1/2 of their weights; the bytes
    autograd saves fall with tp, and further with sp (the residual stream and norms cut over the
    tokens; DTensor keeps each column-wise layer's whole input, so less than 1/2 comes off:
    tests/distributed/test_planner_tp.py accounts for every saved tensor to the byte)."""
    for rank in split_modules:
        held = rank[case]["params"]
        assert held["split"] * 2 == held["whole_split"], held
        whole, tp, sp = rank[case]["saved_bytes_whole"], rank[case]["saved_bytes"], rank[f"{case}-sp"]["saved_bytes"]
        assert tp < 0.7 * whole and sp < 0.97 * tp, (whole, tp, sp)


@pytest.fixture(scope="module")
def dit_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("tpref") / "run"
    single(DIT, out)
    return out


@pytest.mark.slow  # long: opt in with --runslow (the suite's 10-minute budget)
def test_tp_sp_train_equals_one_process(dit_reference, tmp_path):
    """`hirune train` with tp=2 sp=true on 2 processes: the same losses, weights, EMA and AdamW
    state as one process (checkpoints read back from the ranks' DCP shards)."""
    out = tmp_path / "tp"
    proc = torchrun(2, "train", *DIT, "tp=2", "sp=true", f"out={out}")
    _ok(proc)
    assert "world size 2 = dp 1 x tp 2" in proc.stdout
    assert_same_run(dit_reference, out)


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh") / "run"
    proc = torchrun(4, "train", *DIT, "tp=2", "sp=true", "strategy=zero3", f"out={out}", timeout=300)
    _ok(proc)
    assert "global batch 16 = micro-batch 8 x accumulation 1 x data-parallel replicas 2" in proc.stdout
    return out


@pytest.mark.slow  # four processes on two cores (~40 s): opt in with --runslow
def test_2x2_mesh_equals_one_process_with_the_global_batch(dit_reference, mesh_run):
    assert_same_run(dit_reference, mesh_run)


@pytest.mark.slow  # four processes on two cores (~40 s): opt in with --runslow
def test_2x2_mesh_resumes_on_one_process(mesh_run, tmp_path):
    """The 2 x 2 run's shards re-assembled on one process, two more steps: the same as one
    process trained for 6 steps throughout."""
    import shutil

    ref, out = tmp_path / "ref6", tmp_path / "resumed"
    single(DIT, ref, "steps=6")
    shutil.copytree(mesh_run, out)
    single(DIT, out, "steps=6", "resume=true")
    assert losses(out)[-2:] == pytest.approx(losses(ref)[-2:], abs=1e-5)
    assert_same_run(ref, out)


@pytest.mark.slow
def test_2x2_mesh_resumes_on_4x1(mesh_run, tmp_path):
    """The same checkpoint re-sharded by DCP onto 4 data-parallel ranks without tp (zero3)."""
    import shutil

    ref, out = tmp_path / "ref6", tmp_path / "resumed"
    single(DIT, ref, "steps=6")
    shutil.copytree(mesh_run, out)
    _ok(torchrun(4, "train", *DIT, "steps=6", "resume=true", "strategy=zero3", f"out={out}", timeout=300))
    assert_same_run(ref, out)


@pytest.mark.slow
def test_uvit_tp_train_equals_one_process(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "tp"
    single(UVIT, ref)
    _ok(torchrun(2, "train", *UVIT, "tp=2", f"out={out}"))  # 17 tokens: sp would be refused (see below)
    assert_same_run(ref, out)


# --- bad input --------------------------------------------------------------------------------------------
def test_tp_on_a_model_without_a_plan_names_those_with_one():
    from hirune.training.config import check_config

    with pytest.raises(ValueError, match=r"model 'unet' has no tensor-parallel plan; models with one: .*'dit'.*'uvit'"):
        check_config(preset_config("ddpm-mnist5k", {"tp": 2}))


def test_sp_needs_tp():
    from hirune.training.config import check_config

    with pytest.raises(ValueError, match="sp=true .* needs tp >= 2"):
        check_config(preset_config("dit-digits", {"sp": True}))


def test_tp_must_divide_the_heads_and_sp_the_tokens():
    from hirune.models import build_model

    dit = build_model("dit", size="T/2", in_channels=1, image_size=8)   # 3 heads, 16 tokens
    with pytest.raises(ValueError, match=r"tp=2 does not divide the DiT's num_heads \(3\); valid tp: \[1, 3\]"):
        dit.tensor_parallel_plan(2)
    uvit = build_model("uvit", in_channels=1, image_size=8, patch_size=2, hidden_size=64, num_heads=4, depth=3)
    with pytest.raises(ValueError, match=r"cuts the U-ViT's 17 tokens into tp=2 equal parts"):
        uvit.tensor_parallel_plan(2, sp=True)


def test_processes_must_form_a_dp_x_tp_grid():
    from hirune.distributed.tensor_parallel import check_grid

    with pytest.raises(ValueError, match=r"tp=3 does not divide the 4 processes.*valid tp: \[1, 2, 4\]"):
        check_grid(4, 3)
    assert (World(3, 4, 3, "gloo", tp=2).dp_rank, World(3, 4, 3, "gloo", tp=2).tp_rank) == (1, 1)
    with pytest.raises(ValueError, match=r"tp=2 splits each block over 2 processes, and this is one process"):
        check_grid(1, 2)


def test_ddp_over_several_tp_groups_is_refused():
    from hirune.distributed.strategy import check_composition

    with pytest.raises(ValueError, match=r"strategy='ddp' is not valid there; valid: \['zero2', 'zero3'\]"):
        check_composition(World(0, 4, 0, "gloo", tp=2), "ddp")
    check_composition(World(0, 2, 0, "gloo", tp=2), "ddp")  # one tp group: nothing to replicate over


def test_nproc_not_divisible_by_tp_is_refused_before_launching(capsys):
    from hirune.cli import main

    assert main(["train", "dit-digits", "tp=3", "--nproc", "2"]) == 2
    assert "tp=3 does not divide --nproc 2" in capsys.readouterr().err


@pytest.mark.slow
def test_video_run_under_tp_equals_one_process(tmp_path):
    """The video family (CogVideoX on pixels, a caption through the tiny text encoder) under tp=2:
    the same run as one process, and the same preview GIF, byte for byte."""
    net = json.dumps({"size": "tiny", "patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2})
    items = ["cogvideox-moving-mnist5k", "autoencoder=", "steps=3", "batch_size=4", "ckpt_every=3", "sample_every=3",
             "num_samples=2", "sample_steps=2", "log_every=1", "warmup=0", f"model_config={net}"]
    ref, out = tmp_path / "ref", tmp_path / "tp"
    single(items, ref)
    _ok(torchrun(2, "train", *items, "tp=2", f"out={out}"))
    assert_same_run(ref, out)
    gif = "samples/step_00000003.gif"
    assert (ref / gif).read_bytes() == (out / gif).read_bytes()
