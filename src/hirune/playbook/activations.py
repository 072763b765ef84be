"""Activation memory of a transformer layer: measured, fitted, and beside the formula.

Korthikanti et al. 2022 ("Reducing activation recomputation in large transformer models",
sec. 4.1) count what one layer keeps for the backward pass, in bytes, for sequence length s,
micro-batch b, hidden width h and a heads, with 16-bit activations and dropout:

    s b h (34 + 5 a s / h)  =  34 s b h  +  5 a s^2 b

linear in b, and in s except for the attention's (b, a, s, s) tensors (the softmax output,
2 bytes; its dropout mask, 1; the dropout's output, 2: 5 a s^2 b).  The layer of `gpt.GPT`
keeps float32 (4 bytes) and has no dropout here, so term by term (`TERMS`, bytes per token
s b; the s^2 terms per a s^2 b):

    term                                  paper (fp16)   here, math    here, sdpa
    LayerNorm 1 input                     2h             4h            4h
    LayerNorm 1 mean and 1/std            -              8             8
    q k v projection input                2h             4h            4h
    Q and K for q k^T                     4h             8h (copies)   12h (q, k, v: views of one
    V for probabilities x V               2h             4h (a copy)       storage, kept by the kernel)
    softmax output                        2 a s          4 a s         -
    softmax dropout mask / output         3 a s          -             -
    flash kernel: output, log-sum-exp     -              -             4h + 4a
    output projection input               2h             4h            - (a view of that output)
    attention dropout mask                h              -             -
    LayerNorm 2 input, mean and 1/std     2h             4h + 8        4h + 8
    fc1 input                             2h             4h            4h
    GELU input                            8h             16h           16h
    fc2 input (GELU output)               8h             16h           16h
    MLP dropout mask                      h              -             -

so here one layer keeps s b (64 h + 16) + 4 a s^2 b bytes with `attention="math"` and
s b (64 h + 4 a + 16) with `attention="sdpa"` (no s^2 term: the flash kernel recomputes the
probabilities in its backward).  `measure` counts the bytes with saved-tensor hooks
(`memory.SavedTensors`), `fit` finds alpha and beta of bytes = b (alpha s + beta s^2) by least
squares over a grid of (b, s), and the playbook checks both against these sums.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .gpt import GPT, GPTConfig, loss_fn, random_tokens
from .memory import SavedTensors

# (term, paper: (bytes per s b as a multiple of h, of 1), paper: bytes per a s^2 b,
#  math: (per h, per 1, per a), math per a s^2 b, sdpa: (per h, per 1, per a))
TERMS = (
    ("LayerNorm 1 input", (2, 0), 0, (4, 0, 0), 0, (4, 0, 0)),
    ("LayerNorm 1 mean and 1/std", (0, 0), 0, (0, 8, 0), 0, (0, 8, 0)),
    ("qkv projection input", (2, 0), 0, (4, 0, 0), 0, (4, 0, 0)),
    ("Q (scaled) and K (math: contiguous copies)", (4, 0), 0, (8, 0, 0), 0, (0, 0, 0)),
    ("V (math: a contiguous copy)", (2, 0), 0, (4, 0, 0), 0, (0, 0, 0)),
    ("q, k, v (sdpa: one storage)", (0, 0), 0, (0, 0, 0), 0, (12, 0, 0)),
    ("softmax output", (0, 0), 2, (0, 0, 0), 4, (0, 0, 0)),
    ("softmax dropout mask and output", (0, 0), 3, (0, 0, 0), 0, (0, 0, 0)),
    ("flash kernel output and log-sum-exp", (0, 0), 0, (0, 0, 0), 0, (4, 0, 4)),
    ("output projection input", (2, 0), 0, (4, 0, 0), 0, (0, 0, 0)),
    ("attention dropout mask", (1, 0), 0, (0, 0, 0), 0, (0, 0, 0)),
    ("LayerNorm 2 input, mean and 1/std", (2, 0), 0, (4, 8, 0), 0, (4, 8, 0)),
    ("fc1 input", (2, 0), 0, (4, 0, 0), 0, (4, 0, 0)),
    ("GELU input", (8, 0), 0, (16, 0, 0), 0, (16, 0, 0)),
    ("fc2 input (GELU output)", (8, 0), 0, (16, 0, 0), 0, (16, 0, 0)),
    ("MLP dropout mask", (1, 0), 0, (0, 0, 0), 0, (0, 0, 0)),
)


def paper_bytes(s: int, b: int, h: int, a: int) -> int:
    """Korthikanti et al.'s s b h (34 + 5 a s / h): one layer, fp16, with dropout."""
    return 34 * s * b * h + 5 * a * s * s * b


def layer_bytes(s: int, b: int, h: int, a: int, attention: str = "math") -> int:
    """The sum of `TERMS` for this file's layer (float32, no dropout)."""
    col = 3 if attention == "math" else 5
    per_token = sum(t[col][0] * h + t[col][1] + t[col][2] * a for t in TERMS)
    per_square = sum(t[4] for t in TERMS) if attention == "math" else 0
    return s * b * per_token + per_square * a * s * s * b


def measure(config: GPTConfig, batch: int, seq: int, seed: int = 0) -> tuple[int, list[int]]:
    """(bytes saved by one forward and loss of a micro-batch of `batch` sequences of `seq`
    tokens, the part saved inside each block)."""
    torch.manual_seed(seed)
    model = GPT(config)
    tokens = random_tokens(config, batch, seq, seed)
    with SavedTensors(model) as saved:
        loss = loss_fn(model, tokens)
    del loss
    return saved.total, saved.per_block()


def fit(points: list[tuple[int, int, float]]) -> dict:
    """Least squares of bytes = b (alpha s + beta s^2) over (b, s, bytes) points; with the
    largest relative residual and R^2."""
    b = torch.tensor([p[0] for p in points], dtype=torch.float64)
    s = torch.tensor([p[1] for p in points], dtype=torch.float64)
    y = torch.tensor([p[2] for p in points], dtype=torch.float64)
    features = torch.stack([b * s, b * s * s], 1)
    coef = torch.linalg.lstsq(features, y[:, None]).solution[:, 0]
    pred = features @ coef
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    clean = [0.0 if abs(float(c)) < 1e-9 else float(c) for c in coef]   # no "-0.00" in the table
    return {"alpha": clean[0], "beta": clean[1],
            "max_relative_residual": float(((y - pred).abs() / y).max()),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def disagreements(run: dict, formula: Callable[..., int] = layer_bytes) -> list[str]:
    """The grid points of a `sweep` where one layer's measured bytes differ from `formula`."""
    return [f"{run['attention']} b={p['batch']} s={p['seq']}: measured {p['layer']:.0f}, formula "
            f"{formula(p['seq'], p['batch'], run['hidden'], run['heads'], run['attention'])}"
            for p in run["points"] if p["layer"] != formula(p["seq"], p["batch"], run["hidden"], run["heads"],
                                                            run["attention"])]


def sweep(attention: str = "math", layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 128,
          batches=(1, 2, 4), seqs=(8, 16, 32, 64)) -> dict:
    """Measure every (b, s) of the grid; fit the whole model and one layer (the blocks' mean)."""
    config = GPTConfig(vocab=vocab, seq_len=max(seqs), layers=layers, hidden=hidden, heads=heads,
                       attention=attention)
    points = []
    for b in batches:
        for s in seqs:
            total, blocks = measure(config, b, s)
            points.append({"batch": b, "seq": s, "total": total, "layer": sum(blocks) / len(blocks),
                           "formula_here": layer_bytes(s, b, hidden, heads, attention),
                           "formula_paper_fp16": paper_bytes(s, b, hidden, heads)})
    return {"attention": attention, "hidden": hidden, "heads": heads, "layers": layers, "points": points,
            "fit_layer": fit([(p["batch"], p["seq"], p["layer"]) for p in points]),
            "fit_total": fit([(p["batch"], p["seq"], p["total"]) for p in points]),
            # the formula's own alpha and beta: bytes = b (alpha s + beta s^2)
            "formula_alpha": layer_bytes(1, 1, hidden, heads, attention) - (4 * heads if attention == "math" else 0),
            "formula_beta": 4 * heads if attention == "math" else 0}


def playbook(layers: int = 2, hidden: int = 64, heads: int = 4, vocab: int = 128,
             batches: tuple[int, ...] = (1, 2, 4), seqs: tuple[int, ...] = (8, 16, 32, 64)):
    from .report import Report

    runs = [sweep(a, layers, hidden, heads, vocab, batches, seqs) for a in ("math", "sdpa")]
    rows = [[r["attention"], p["batch"], p["seq"], p["total"], p["layer"], p["formula_here"], p["formula_paper_fp16"]]
            for r in runs for p in r["points"]]
    notes = []
    for r in runs:
        f = r["fit_layer"]
        exact = not disagreements(r)
        notes.append(f"{r['attention']}: one layer fits b (alpha s + beta s^2) with alpha = {f['alpha']:.1f}, "
                     f"beta = {f['beta']:.2f} (formula here: {r['formula_alpha']}, {r['formula_beta']}; "
                     f"max relative residual {f['max_relative_residual']:.1e}); measured "
                     f"{'equals' if exact else 'DIFFERS FROM'} the formula at every point")
    notes += [f"formula here (float32, no dropout): math s b (64 h + 16) + 4 a s^2 b, sdpa s b (64 h + 4 a + 16); "
              f"paper (fp16, dropout): s b h (34 + 5 a s / h); h = {hidden}, a = {heads}",
              "total: the whole model's saved bytes (embeddings, final norm, head and loss included)"]
    return Report("activations", "saved activation bytes per micro-batch (saved-tensor hooks) against b and s",
                  ["attention", "b", "s", "total", "one layer", "formula here", "paper fp16"], rows, notes,
                  {"runs": runs, "terms": [t[0] for t in TERMS]}, lambda path: plot(runs, path))


def plot(runs: list[dict], path) -> None:
    """One layer's bytes over s, one curve per b: measured points and the fitted b (alpha s + beta s^2)."""
    from .report import pyplot, save

    plt = pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.0 * len(runs), 3.8), squeeze=False)
    for ax, r in zip(axes[0], runs):
        f = r["fit_layer"]
        seqs = sorted({p["seq"] for p in r["points"]})
        grid = torch.linspace(min(seqs), max(seqs), 100)
        for b in sorted({p["batch"] for p in r["points"]}):
            pts = [p for p in r["points"] if p["batch"] == b]
            line = ax.plot(grid, b * (f["alpha"] * grid + f["beta"] * grid**2) / 2**20, lw=1)[0]
            ax.plot([p["seq"] for p in pts], [p["layer"] / 2**20 for p in pts], "o", color=line.get_color(),
                    label=f"b = {b}")
        ax.set_xlabel("sequence length s")
        ax.set_ylabel("MiB saved by one layer")
        ax.set_title(f"{r['attention']}: alpha = {f['alpha']:.0f}, beta = {f['beta']:.1f} bytes", fontsize=9)
        ax.legend(fontsize=7)
    save(fig, path)
