"""CLIP's loss over the global batch on two gloo processes (`objectives/contrastive.py`):
with the embeddings all-gathered with gradients, each rank's loss and DDP's averaged
gradients equal one process's with the whole batch; each rank contrasting only its own
rows (no gather) is caught by the same comparison.  The slow test runs the clip family
end to end: `hirune train` on two processes equals one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import contrastive_worker as W  # noqa: E402

from hirune.objectives.contrastive import contrastive_loss  # noqa: E402


def torchrun(n: int, script: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", str(script),
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ,
                                                                                     "OMP_NUM_THREADS": "1"})


def one_process() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model, text = W.network()
    images, ids, mask = W.batch(text)
    loss = contrastive_loss(*model(images, ids, mask)).loss
    loss.backward()
    return loss.detach(), W.gradients(model)


def assert_equal_to(reference, result, tol: float = 1e-6) -> None:
    loss, grads = reference
    torch.testing.assert_close(result["loss"], loss, rtol=tol, atol=tol)
    for name, g in grads.items():
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-5, atol=tol, msg=name)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip2")
    proc = torchrun(2, TESTS / "contrastive_worker.py", str(out))
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-30000:]
    return {f.stem: torch.load(f) for f in out.glob("*.pt")}


def test_two_processes_with_the_gather_equal_one_with_the_global_batch(two_ranks):
    reference = one_process()
    for rank in (0, 1):  # the loss is the global batch's on every rank; DDP's average gives its gradients
        assert_equal_to(reference, two_ranks[f"gather_rank{rank}"])
    assert any(float(g.abs().max()) > 1e-4 for g in reference[1].values())  # not trivially zero


def test_the_local_loss_without_the_gather_is_caught(two_ranks):
    """Harness: each rank contrasting its 4 rows against its own 4 (fewer negatives) gives
    other losses and gradients, and the comparison fails."""
    reference = one_process()
    for rank in (0, 1):
        with pytest.raises(AssertionError):
            assert_equal_to(reference, two_ranks[f"local_rank{rank}"])


CLIP_RUN = ["clip-digits", 'model_config={"channels": 16, "embed_dim": 16, "text_dim": 32, "text_depth": 1}',
            "batch_size=16", "steps=4", "log_every=1", "ckpt_every=2", "lr=0.01", "warmup=0",
            "lr_schedule=constant", "ema_decay=0.9"]


def without_key_biases(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The attention key biases left out: their gradient is zero in exact arithmetic (a
    softmax ignores a constant added to all of a query's logits), so AdamW, which divides a
    gradient by its own size, turns rounding noise of order 1e-10 into steps of order lr."""
    return {k: v for k, v in tensors.items() if not k.endswith(".k.bias")}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero2"])
def test_a_clip_run_on_two_processes_equals_one(strategy, tmp_path):
    """End to end through the trainer, under DDP and FSDP2 (its gradients summed and
    divided, as DDP averages): losses, weights and EMA after 4 steps (the image
    tower's GroupNorms hold 2 channels per group here: with 1, the conv biases before them
    would have exactly-zero gradients too)."""
    from distributed.test_distributed import WORKER, _overrides, losses, whole

    from hirune.training import preset_config, train

    one, two = tmp_path / "one", tmp_path / "two"
    train(preset_config(CLIP_RUN[0], {**_overrides(CLIP_RUN[1:]), "out": str(one)}), progress=False)
    proc = torchrun(2, WORKER, "train", *CLIP_RUN, f"strategy={strategy}", f"out={two}")
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-30000:]
    la, lb = losses(one), losses(two)
    assert len(la) == 4 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-5, (la, lb)
    ta, tb = whole(one), whole(two)
    for part in ("model", "ema"):
        a, b = without_key_biases(ta[part]), without_key_biases(tb[part])
        for k, v in a.items():
            torch.testing.assert_close(b[k], v, rtol=1e-5, atol=1e-5, msg=f"{part}.{k}")
