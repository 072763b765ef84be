"""How many parameters a GPT-style transformer has, in closed form.

For hidden width h, L blocks, vocabulary V and s positions (`gpt.GPT`):

    one block     12 h^2 + 13 h
                  = qkv (3h^2 + 3h) + output projection (h^2 + h)        attention: 4h^2 + 4h
                  + fc1 (4h^2 + 4h) + fc2 (4h^2 + h)                     MLP:       8h^2 + 5h
                  + two LayerNorms (2 x 2h: a scale and a shift each)               4h
    embeddings    (V + s) h        token table V x h, learned positions s x h
    final norm    2 h
    head          0 when tied to the token table, V h otherwise (no bias)

    N = L (12 h^2 + 13 h) + (V + s) h + 2 h [+ V h]

so for large h the blocks dominate with 12 L h^2 (GPT-3 175B: L = 96, h = 12288 gives
12 L h^2 = 174 B).  `count` is the real `sum(p.numel())` of a built model; the playbook
checks the two agree exactly for several shapes.
"""

from __future__ import annotations

from collections.abc import Callable

from .gpt import GPT, GPTConfig

SHAPES = ((2, 64, 128, 64, True), (2, 64, 128, 64, False), (4, 128, 1000, 256, True), (6, 96, 50, 32, False),
          (12, 768, 50257, 1024, True))   # (L, h, V, s, tied); the last is GPT-2 small's shape


def formula(config: GPTConfig) -> dict[str, int]:
    """The closed form, term by term (see the module docstring)."""
    L, h, V, s = config.layers, config.hidden, config.vocab, config.seq_len
    return {"blocks": L * (12 * h * h + 13 * h), "embeddings": (V + s) * h, "final_norm": 2 * h,
            "head": 0 if config.tied else V * h}


def count(config: GPTConfig) -> int:
    """sum(p.numel()) of the built model (a shared weight counted once, as parameters() does)."""
    import torch

    with torch.device("meta"):   # no memory, no initialisation: only the shapes
        model = GPT(config)
    return sum(p.numel() for p in model.parameters())


def compare(shapes=SHAPES, formula: Callable[[GPTConfig], dict[str, int]] = formula) -> list[dict]:
    """One row per (L, h, V, s, tied): the formula's terms, its total, the real count."""
    rows = []
    for L, h, V, s, tied in shapes:
        config = GPTConfig(vocab=V, seq_len=s, layers=L, hidden=h, heads=4, tied=tied)
        terms = formula(config)
        rows.append({"layers": L, "hidden": h, "vocab": V, "seq_len": s, "tied": tied, **terms,
                     "formula": sum(terms.values()), "real": count(config)})
    return rows


def mismatches(rows: list[dict]) -> list[str]:
    """The shapes where the formula and the real count differ (empty: the formula is exact)."""
    return [f"L={r['layers']} h={r['hidden']} V={r['vocab']} s={r['seq_len']} tied={r['tied']}: "
            f"formula {r['formula']} != real {r['real']}" for r in rows if r["formula"] != r["real"]]


def playbook():
    from .report import Report

    rows = compare()
    bad = mismatches(rows)
    columns = ["layers", "hidden", "vocab", "seq_len", "tied", "blocks", "embeddings", "final_norm", "head",
               "formula", "real"]
    notes = ["N = L (12 h^2 + 13 h) + (V + s) h + 2 h [+ V h untied]; real = sum(p.numel()) of the built model",
             "the formula equals the real count for every shape" if not bad else "MISMATCH: " + "; ".join(bad),
             "the last row is GPT-2 small's shape (124,439,808 parameters)"]
    return Report("parameters", "parameter count of the GPT: closed form against the model",
                  columns, [[r[c] for c in columns] for r in rows], notes, {"rows": rows},
                  lambda path: plot(rows, path))


def plot(rows: list[dict], path) -> None:
    from .report import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.0))
    real, form = [r["real"] for r in rows], [r["formula"] for r in rows]
    ax.loglog(real, form, "o")
    lo, hi = min(real) / 2, max(real) * 2
    ax.loglog([lo, hi], [lo, hi], "k-", lw=0.8, label="formula = real")
    for r in rows:
        ax.annotate(f"L{r['layers']} h{r['hidden']}{'' if r['tied'] else ' untied'}", (r["real"], r["formula"]),
                    fontsize=6, xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("sum(p.numel())")
    ax.set_ylabel("L (12h^2 + 13h) + (V + s) h + 2h [+ Vh]")
    ax.legend(fontsize=7)
    ax.set_title("parameters: formula against the real count", fontsize=9)
    save(fig, path)
