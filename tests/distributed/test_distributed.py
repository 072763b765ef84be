"""Data parallelism on torch.distributed (gloo on this CPU), launched by torchrun:
every strategy reproduces one process with the whole batch; accumulation all-reduces
once per optimizer step; runs resume across world sizes; a failing rank stops the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hirune.checkpoint import CheckpointError, flatten_optimizer_state, latest_checkpoint, load_checkpoint
from hirune.distributed import sharded
from hirune.training import preset_config, train

WORKER = Path(__file__).resolve().parents[1] / "dist_worker.py"
BASE = ["ddpm-two-moons", "model_config={\"hidden\": 32, \"depth\": 2}", "batch_size=32", "steps=6",
        "log_every=1", "ckpt_every=3", "sample_every=0", "lr=0.01", "warmup=0", "lr_schedule=constant",
        "ema_decay=0.9"]


def torchrun(n: int, scenario: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
           str(WORKER), scenario, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _overrides(items: list[str]) -> dict:
    from hirune.training.presets import parse_preset_args

    return parse_preset_args(items)[1]


def single(out: Path, *extra: str):
    """The reference: one process, the whole batch, in this interpreter."""
    return train(preset_config(BASE[0], {**_overrides(BASE[1:] + list(extra)), "out": str(out)}), progress=False)


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def whole(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Model, EMA and (flattened, position-keyed) optimizer tensors of a run's latest
    checkpoint, in either layout (whole state, or every rank's shards)."""
    tensors, state = load_checkpoint(run_dir)
    if state.get("layout") == "sharded":
        model, ema, optim = sharded.read_whole(latest_checkpoint(run_dir), state)
        tensors.update(model=model, ema=ema, optimizer=flatten_optimizer_state(optim)[0])
    return tensors


def assert_same_run(a: Path, b: Path, tol: float = 1e-5) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) and max(abs(x - y) for x, y in zip(la, lb)) < tol, (la, lb)
    ta, tb = whole(a), whole(b)
    for part in ("model", "ema"):
        for k, v in ta[part].items():
            torch.testing.assert_close(tb[part][k], v, rtol=tol, atol=tol, msg=f"{part}.{k}")
    for k, v in ta["optimizer"].items():
        torch.testing.assert_close(tb["optimizer"][k], v, rtol=1e-4, atol=tol, msg=f"optimizer.{k}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    single(out)
    return out


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-30000:]


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("zero1", marks=pytest.mark.slow),
                                      pytest.param("zero2", marks=pytest.mark.slow)])
def test_two_processes_equal_one_with_the_whole_batch(strategy, reference, tmp_path):
    """2 processes x 16 = 1 process x 32: the same losses, weights, EMA and AdamW state (zero3:
    the next test, on the zero3 run the sharded-checkpoint tests read)."""
    out = tmp_path / strategy
    proc = torchrun(2, "train", *BASE, f"strategy={strategy}", f"out={out}")
    _ok(proc)
    assert "global batch 32 = micro-batch 16 x accumulation 1 x world size 2" in proc.stdout
    assert_same_run(reference, out)


def test_zero3_on_two_processes_equals_one_with_the_whole_batch(zero3_run, reference):
    assert_same_run(reference, zero3_run)


@pytest.mark.slow
def test_zero2_bf16_gathers_bf16_weights_and_keeps_fp32_shards(tmp_path):
    """FSDP2's mixed-precision policy under precision=bf16: blocks compute with bf16
    weights gathered from float32 shards (the master weights AdamW updates), and the loss
    curve follows one bf16-autocast process with the whole batch to bf16 accuracy (the
    weights themselves differ by up to a few AdamW steps where gradients are tiny: Adam
    normalises the bf16 rounding differences of near-zero gradients to full-size steps)."""
    ref, out = tmp_path / "ref", tmp_path / "mp"
    single(ref, "precision=bf16")
    _ok(torchrun(2, "record-dtypes", *BASE, "strategy=zero2", "precision=bf16", f"out={out}"))
    for rank in (0, 1):
        seen = json.loads((out / f"dtypes_rank{rank}.json").read_text())
        assert seen == {"stored": "torch.float32", "gathered": "torch.bfloat16"}, seen
    la, lb = losses(ref), losses(out)
    assert max(abs(a - b) / abs(a) for a, b in zip(la, lb)) < 2e-2, (la, lb)
    assert all(v.dtype == torch.float32 for v in whole(out)["model"].values())


@pytest.mark.slow  # the harness shown to reject a broken variant; opt in with --runslow (the suite's budget)
def test_parity_catches_summed_gradients(reference, tmp_path):
    """Harness: FSDP2 reducing with SUM and no division (the gloo AVG fault, pytorch
    issue 162338) doubles every gradient, and the comparison fails."""
    out = tmp_path / "sum"
    _ok(torchrun(2, "sum-grads", *BASE, "strategy=zero2", "grad_clip=1e9", f"out={out}"))
    with pytest.raises(AssertionError):
        assert_same_run(reference, out)


@pytest.mark.slow
def test_accumulation_and_unet_under_zero3(tmp_path):
    """Accumulation (2 ranks x 2 micro-batches x 8 = 32) and a UNet sharded per block,
    with each block recomputing its activations in the backward pass."""
    out1, out2 = tmp_path / "one", tmp_path / "two"
    items = ["ddpm-digits", "model_config={\"channels\": 16, \"channel_mult\": [1, 2], \"attention_resolutions\": [2]}",
             "batch_size=32", "steps=3", "log_every=1", "ckpt_every=3", "sample_every=3", "num_samples=4",
             "sample_steps=2", "lr_schedule=constant", "warmup=0"]
    train(preset_config(items[0], {**_overrides(items[1:]), "out": str(out1)}), progress=False)
    proc = torchrun(2, "train", *items, "strategy=zero3", "grad_accum=2", "recompute=true", f"out={out2}")
    _ok(proc)
    assert "micro-batch 8 x accumulation 2 x world size 2" in proc.stdout
    assert_same_run(out1, out2, tol=1e-4)
    assert (out2 / "samples" / "step_00000003.png").exists()


# 48 channels: GroupNorm groups of 2 or more, so that no bias has a gradient that is pure
# rounding noise (with one channel per group the biases before a norm have zero gradient,
# and AdamW turns the ranks' different rounding of zero into full-size steps)
GAN = ["kl-ae-digits", "model_config={\"size\": \"f2\", \"channels\": 48, \"z_channels\": 4, \"kl_weight\": 0.001, "
       "\"disc_weight\": 0.5, \"disc_start\": 2, \"disc_channels\": 8}", "batch_size=16", "grad_accum=2", "steps=4",
       "log_every=1", "ckpt_every=4", "sample_every=0", "warmup=0", "lr_schedule=constant"]


@pytest.fixture(scope="module")
def gan_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("gan") / "run"
    train(preset_config(GAN[0], {**_overrides(GAN[1:]), "out": str(out)}), progress=False)
    return out


def assert_same_discriminator(a: Path, b: Path, tol: float = 1e-5) -> None:
    ta, tb = load_checkpoint(a)[0], load_checkpoint(b)[0]
    for part in ("discriminator", "disc_optimizer"):
        assert ta[part].keys() == tb[part].keys()
        for k, v in ta[part].items():
            torch.testing.assert_close(tb[part][k], v, rtol=1e-4, atol=tol, msg=f"{part}.{k}")


@pytest.mark.slow  # the GAN adversary on two processes: ~18 s each; opt in with --runslow
@pytest.mark.parametrize("strategy", ["ddp", "zero1"])
def test_gan_autoencoder_on_two_processes_equals_one(strategy, gan_reference, tmp_path):
    """An autoencoder with the adversarial loss (on from step 2), 2 processes x 2
    micro-batches x 4 = 1 process x 2 x 8: the same losses, autoencoder, EMA, AdamW, and
    replicated discriminator with its AdamW (VQGAN's adaptive weight from gradients
    averaged over the ranks; the discriminator under DDP with no_sync).  Weights agree to
    about 1e-5; the per-rank weight of the next test moves them by 1e-3."""
    out = tmp_path / strategy
    _ok(torchrun(2, "train", *GAN, f"strategy={strategy}", f"out={out}"))
    assert_same_run(gan_reference, out, tol=5e-5)
    assert_same_discriminator(gan_reference, out, tol=5e-5)


@pytest.mark.slow
def test_gan_parity_catches_a_per_rank_adaptive_weight(gan_reference, tmp_path):
    """Harness: each rank weighting the GAN term by its own half-batch gradients."""
    out = tmp_path / "local"
    _ok(torchrun(2, "gan-local-weight", *GAN, f"out={out}"))
    with pytest.raises(AssertionError):
        assert_same_run(gan_reference, out, tol=5e-5)


@pytest.mark.slow
def test_gan_refuses_fsdp_strategies(tmp_path):
    proc = torchrun(2, "train", *GAN, "strategy=zero2", f"out={tmp_path / 'z'}")
    assert proc.returncode != 0
    assert "needs strategy in ['ddp', 'zero1'], not 'zero2'" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_one_all_reduce_per_optimizer_step(reference, tmp_path):
    """DDP with 4 micro-batches: `no_sync` leaves one gradient all-reduce per step (the
    model fits one bucket; without it there would be 4), and the steps equal one batch
    4 x 2 times larger."""
    out = tmp_path / "count"
    _ok(torchrun(2, "count-allreduce", *BASE, "grad_accum=4", "steps=2", f"out={out}"))
    for rank in (0, 1):
        assert json.loads((out / f"allreduce_rank{rank}.json").read_text()) == [1, 1]
    assert max(abs(a - b) for a, b in zip(losses(out), losses(reference)[:2])) < 1e-5
    broken = tmp_path / "broken"
    _ok(torchrun(2, "count-allreduce-without-no-sync", *BASE, "grad_accum=4", "steps=2", f"out={broken}"))
    assert json.loads((broken / "allreduce_rank0.json").read_text()) == [4, 4]


@pytest.mark.parametrize("first, second", [pytest.param(1, 2, marks=pytest.mark.slow),
                                           pytest.param(2, 4, marks=pytest.mark.slow)])
def test_resume_across_world_sizes(first, second, reference, tmp_path):
    """Stop at step 3 with one world size, resume to 6 with the other: the same run as
    uninterrupted (model, EMA, AdamW, step; the data order re-derived from seed and step).
    1 -> 2 shards a whole-state checkpoint; 2 -> 4 re-shards through
    torch.distributed.checkpoint, each rank reading only the pieces its new shards cover;
    2 -> 1: the next test."""
    out = tmp_path / "elastic"
    stop = [*BASE[:3], "steps=3", *BASE[4:]]
    for n, items in ((first, stop), (second, [*BASE, "resume=true"])):
        if n == 1:
            train(preset_config(items[0], {**_overrides(items[1:]), "out": str(out)}), progress=False)
        else:
            _ok(torchrun(n, "train", *items, "strategy=zero3", f"out={out}"))
    assert_same_run(reference, out)


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero3") / "run"
    _ok(torchrun(2, "train", *BASE, "strategy=zero3", f"out={out}"))
    return out


def test_a_two_rank_sharded_run_resumes_on_one_process(zero3_run, reference, tmp_path):
    """2 -> 1: the zero3 run's step-3 checkpoint (its shards, read into one process) resumed to
    step 6 on one process is the uninterrupted run.  The learning rate is constant, so the
    6-step run's step-3 checkpoint is the one a 3-step run would have written."""
    import shutil

    out = tmp_path / "elastic"
    shutil.copytree(zero3_run, out)
    shutil.rmtree(out / "checkpoints" / "step_00000006")
    (out / "checkpoints" / "latest").write_text("step_00000003")
    train(preset_config(BASE[0], {**_overrides([*BASE[1:], "resume=true"]), "out": str(out)}), progress=False)
    assert latest_checkpoint(out).name == "step_00000006"  # written again, by this process's steps 4 to 6
    assert_same_run(reference, out)


def test_sharded_checkpoints_hold_each_ranks_pieces(zero3_run, reference):
    """zero3 on 2 ranks writes two safetensors shard files (no pickle, no whole-state
    file) whose pieces are the two halves of every tensor; reassembled, they are the
    single-process run; `hirune sample` reads the run directly."""
    from safetensors import safe_open

    from hirune.training.loading import load

    ckpt = latest_checkpoint(zero3_run)
    _, state = load_checkpoint(ckpt)
    assert state["layout"] == "sharded" and not (ckpt / "model.safetensors").exists()
    files = sorted((ckpt / "shards").iterdir())
    assert [f.name for f in files] == [f"shard-0000{i}-model-00001-of-00001.safetensors" for i in (1, 2)]
    assert all(f"shards/{f.name}" in state["files"] for f in files)
    ref = whole(reference)["model"]
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in [k for k in f.keys() if k.startswith("model.") and ref[k[6:]].dim() == 2]:
                assert f.get_slice(key).get_shape()[0] == ref[key[6:]].shape[0] // 2, key
    loaded = load(zero3_run)
    for k, v in whole(reference)["ema"].items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=1e-5, atol=1e-5)


def test_export_of_a_sharded_run_is_one_file_hirune_sample_reads(zero3_run, reference, tmp_path):
    from hirune.cli import main
    from hirune.training.export import read_weights
    from hirune.training.loading import load

    file = tmp_path / "w.safetensors"
    assert main(["export", str(zero3_run), "--out", str(file)]) == 0
    weights, meta = read_weights(file)
    assert meta["step"] == 6 and meta["weights"] == "ema" and meta["run_config"]["strategy"] == "zero3"
    for k, v in whole(reference)["ema"].items():
        torch.testing.assert_close(weights[k], v, rtol=1e-5, atol=1e-5)
    loaded = load(file)
    for k, v in load(zero3_run).model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k
    assert main(["sample", str(file), "--n", "16", "--steps", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0


def test_sharded_checkpoint_faults_are_named(zero3_run, tmp_path):
    """A corrupt shard fails its sha256; a missing one leaves pieces uncovered (the
    reassembly checks coverage, so it cannot return a half-initialised tensor)."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(zero3_run, bad)
    ckpt = latest_checkpoint(bad)
    _, state = load_checkpoint(ckpt)
    shard = ckpt / "shards" / "shard-00002-model-00001-of-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="shard-00002.*sha256"):
        load_checkpoint(bad)
    shard.unlink()
    with pytest.raises(ValueError, match="a shard is missing"):
        sharded.read_full(ckpt, state["optimizer"]["shapes"])


@pytest.mark.slow
def test_ranks_resuming_from_different_checkpoints_are_stopped(zero3_run, tmp_path):
    import shutil

    out = tmp_path / "stale"
    shutil.copytree(zero3_run, out)
    proc = torchrun(2, "stale-rank-1", *BASE, "strategy=zero3", "steps=9", "resume=true", f"out={out}")
    assert proc.returncode != 0
    assert "ranks resume from different checkpoints: rank 0 has (6, 'step_00000006'), " \
           "rank 1 has (3, 'step_00000003')" in proc.stdout + proc.stderr


def test_a_failing_rank_stops_the_run_naming_the_rank(tmp_path):
    start = time.monotonic()
    proc = torchrun(2, "fail", *BASE, "steps=50", f"out={tmp_path / 'f'}", timeout=120)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "injected fault on rank 1" in text and "rank" in text
    assert time.monotonic() - start < 60


@pytest.mark.slow
def test_world_size_must_divide_the_batch(tmp_path):
    proc = torchrun(2, "train", *BASE, "batch_size=33", f"out={tmp_path / 'b'}")
    assert proc.returncode != 0
    assert "divisible by grad_accum x world size = 1 x 2" in proc.stdout + proc.stderr


@pytest.mark.slow  # opt in with --runslow (the suite's 10-minute budget)
def test_hirune_train_nproc_launches_torchrun(tmp_path, capsys):
    from hirune.checkpoint import latest_checkpoint
    from hirune.cli import main

    out = tmp_path / "n"
    assert main(["train", *BASE, "steps=2", "ckpt_every=2", f"out={out}", "--nproc", "2"]) == 0
    assert "torch.distributed.run --standalone --nproc-per-node=2 -m hirune train" in capsys.readouterr().out
    assert latest_checkpoint(out) is not None and len(losses(out)) == 2
