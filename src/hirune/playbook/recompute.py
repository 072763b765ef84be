"""Full against selective activation recomputation: memory kept, time spent, gradients.

Korthikanti et al. 2022 (sec. 5) observe that the attention's s^2 tensors (the (b, a, s, s)
softmax output, with dropout its mask and output) are most of a layer's activations at long
sequences but cheap to recompute, so *selective* recomputation drops only the core attention
(q k^T, softmax, probabilities x V) and rebuilds it in the backward pass, while *full*
recomputation keeps only each block's input and reruns the whole block.  Both are exact: the
backward pass sees the same numbers (the random state is replayed for dropout), so the
gradients equal the plain ones.

`compare` trains one forward + backward of `gpt.GPT` (math attention) three ways from the same
weights and tokens and reports the bytes kept between forward and backward (saved-tensor hooks
plus the inputs torch's checkpoint holds), the median time of a training step, and the largest
gradient difference from the plain run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .gpt import GPT, GPTConfig, loss_fn, random_tokens
from .memory import SavedTensors

MODES = {"none": {}, "selective": {"selective": True}, "full": {"full": True}}


def gradients(model: nn.Module, tokens: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """(the gradients of one forward + backward, the bytes kept between the two)."""
    model.zero_grad(set_to_none=True)
    with SavedTensors(model) as saved:
        loss = loss_fn(model, tokens)
    kept = saved.total
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, kept


def step_seconds(models: list[nn.Module], tokens: torch.Tensor, repeats: int) -> list[float]:
    """Median wall time of forward + backward of each model, after one warm-up; the models take
    turns (one step each per round), so a machine shared with other work slows all of them alike."""
    times: list[list[float]] = [[] for _ in models]
    for i in range(repeats + 1):
        for model, seen in zip(models, times):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss_fn(model, tokens).backward()
            if i:
                seen.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def compare(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 128, seq: int = 128, batch: int = 4,
            dropout: float = 0.0, repeats: int = 5, seed: int = 0,
            build: Callable[[GPTConfig], nn.Module] = GPT) -> list[dict]:
    """One row per mode (none, selective, full): kept bytes, median step seconds, the largest
    |gradient - plain gradient|.  `build` makes the model from its config (tests pass broken ones)."""
    rows, models, reference = [], [], None
    for mode, flags in MODES.items():
        config = GPTConfig(vocab=vocab, seq_len=seq, layers=layers, hidden=hidden, heads=heads, attention="math",
                           dropout=dropout, **flags)
        torch.manual_seed(seed)
        models.append(build(config).train())
        tokens = random_tokens(config, batch, seed=seed)
        torch.manual_seed(seed + 1)   # the dropout masks: the same draws in every mode
        grads, kept = gradients(models[-1], tokens)
        reference = reference or grads
        diff = max(float((grads[n] - reference[n]).abs().max()) for n in reference)
        rows.append({"mode": mode, "kept_bytes": kept, "max_grad_diff": diff})
    for row, seconds in zip(rows, step_seconds(models, tokens, repeats)):
        row["step_seconds"] = seconds
    return rows


def playbook(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 128, seq: int = 128, batch: int = 4,
             repeats: int = 9):
    from .report import Report

    rows = compare(layers, hidden, heads, vocab, seq, batch, repeats=repeats)
    base = rows[0]
    table = [[r["mode"], r["kept_bytes"], r["kept_bytes"] / base["kept_bytes"], r["step_seconds"] * 1000,
              r["step_seconds"] / base["step_seconds"], r["max_grad_diff"]] for r in rows]
    exact = all(r["max_grad_diff"] == 0 for r in rows)
    notes = [f"GPT L={layers} h={hidden} a={heads}, math attention, micro-batch {batch} x {seq} tokens; step time: "
             f"median of {repeats} forward + backward on this machine, the modes taking turns",
             "kept: bytes between forward and backward (saved tensors + the inputs checkpoint holds)",
             "selective drops the (b, a, s, s) softmax output of every layer (4 a s^2 b bytes here); full keeps "
             "only each block's input",
             "gradients equal the plain run's bitwise" if exact else
             f"gradients differ from the plain run by up to {max(r['max_grad_diff'] for r in rows):.2e}"]
    return Report("recompute", "activation recomputation: none, selective (core attention), full (every block)",
                  ["mode", "kept bytes", "kept / none", "step ms", "time / none", "max |grad diff|"], table, notes,
                  {"rows": rows}, lambda path: plot(rows, path))


def plot(rows: list[dict], path) -> None:
    from .report import pyplot, save

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(7.5, 3.2))
    names = [r["mode"] for r in rows]
    a.bar(names, [r["kept_bytes"] / 2**20 for r in rows], color="tab:blue")
    a.set_ylabel("MiB kept for backward")
    b.bar(names, [r["step_seconds"] * 1000 for r in rows], color="tab:orange")
    b.set_ylabel("ms per forward + backward")
    fig.suptitle("recomputation: memory against time", fontsize=9)
    save(fig, path)
