"""Tensor-parallel plans: how a transformer says which of its modules split, and how.

A model that can run under tensor parallelism has a method `tensor_parallel_plan(tp, sp)`
returning a list of (module path, kind) pairs; `distributed.tensor_parallel` turns each kind
into PyTorch's DTensor styles (`parallelize_module`).  The model says only *what* its
modules are; it never imports torch.distributed.  The kinds (Megatron-LM's split,
Shoeybi et al. 2019, sec. 3; sequence parallelism, Korthikanti et al. 2022, sec. 4.2.2):

    colwise        a Linear split by its output rows: q, k, v (whole heads per rank) and the
                   MLP's first layer; the input replicated, the output the rank's slice
    rowwise        a Linear split by its input columns: attention's output projection and
                   the MLP's second layer; partial sums all-reduced (under sp: reduce-scattered
                   onto the rank's tokens) -- one collective per attention and one per MLP
    rowwise_whole  the same outside the sequence-parallel region (a text encoder's blocks):
                   always all-reduced
    colwise_gather a Linear split by output rows whose whole output every rank needs (DiT's
                   adaLN modulation, 6 D x D per block): its weights sharded, its small output
                   all-gathered
    heads          a module applied per head (qk-norm's LayerNorm): it runs on the rank's heads,
                   its parameters replicated, their gradients summed over the ranks
    head_dropout   an attention whose dropout acts on its probabilities (B, heads, N, N): told
                   which of the heads the rank holds, it keeps that slice of the mask drawn for
                   every head (`keep_mask`), so the draws do not depend on the layout
    tokens         a module applied per token with parameters (an affine LayerNorm, U-ViT's
                   skip Linear): under sp it runs on the rank's tokens, its parameters
                   replicated and their gradients summed over the ranks; without sp untouched
    region         a module that starts a split region (an attention, a cross-attention, an
                   MLP): its first argument becomes one replicated DTensor that the column-wise
                   layers share, so their input gradients are summed over the ranks in one
                   all-reduce (not one per layer); under sp it is all-gathered from the tokens
    region_whole   the same outside the sequence-parallel region: never gathered
    sequence_start the first block: under sp its first argument is cut into the rank's tokens
    sequence_end   the last block: under sp its output is all-gathered over the tokens

Everything a plan leaves out stays replicated: each rank holds the whole module and computes
the same result from the same inputs.
"""

from __future__ import annotations

import torch

KINDS = ("colwise", "rowwise", "rowwise_whole", "colwise_gather", "heads", "head_dropout", "tokens", "region",
         "region_whole", "sequence_start", "sequence_end")


def check_split(tp: int, what: str, **sizes: int) -> None:
    """ValueError unless `tp` divides each of `sizes` (heads, widths): a rank holds whole heads."""
    for name, value in sizes.items():
        if value % tp:
            raise ValueError(f"tp={tp} does not divide the {what}'s {name} ({value}); valid tp: "
                             f"{[d for d in range(1, value + 1) if value % d == 0]}")


def check_tokens(tp: int, tokens: int, what: str) -> None:
    """ValueError unless `tp` divides the token count (sequence parallelism cuts it evenly)."""
    if tokens % tp:
        raise ValueError(f"sp=true cuts the {what}'s {tokens} tokens into tp={tp} equal parts: tp must divide "
                         f"{tokens}; valid tp: {[d for d in range(1, tokens + 1) if tokens % d == 0]}")


def attention_plan(path: str, qk_norm: bool, sequence: bool = True, out: str = "proj") -> list[tuple[str, str]]:
    """hirune.nn.Attention / CrossAttention at `path` (output projection `out`): split by heads.
    sequence=False: a module outside the sequence-parallel region (its input never gathered,
    its output always all-reduced)."""
    plan = [(path, "region" if sequence else "region_whole")]
    plan += [(f"{path}.q", "colwise"), (f"{path}.k", "colwise"), (f"{path}.v", "colwise"),
             (f"{path}.{out}", "rowwise" if sequence else "rowwise_whole")]
    if qk_norm:
        plan += [(f"{path}.q_norm", "heads"), (f"{path}.k_norm", "heads")]
    return plan


def mlp_plan(path: str, first: str = "0", second: str = "2", sequence: bool = True) -> list[tuple[str, str]]:
    """A two-layer MLP at `path`: the first Linear column-wise, the second row-wise."""
    if not sequence:  # one column-wise layer: nothing to share, nothing to gather
        return [(f"{path}.{first}", "colwise"), (f"{path}.{second}", "rowwise_whole")]
    return [(path, "region"), (f"{path}.{first}", "colwise"), (f"{path}.{second}", "rowwise")]


def no_sequence_parallel(sp: bool, what: str, why: str) -> None:
    """ValueError for sp=true on a model whose plan has no sequence-parallel region."""
    if sp:
        raise ValueError(f"sp=true is not valid for {what}: {why}; use tp alone (sp=false)")


def prefixed(prefix: str, plan: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A submodule's plan in its parent's paths."""
    return [(f"{prefix}.{path}", kind) for path, kind in plan]


def keep_mask(shape, p: float, heads: tuple[int, int] | None, device) -> torch.Tensor:
    """Dropout's keep mask (True = kept, probability 1 - p) for a (B, h, ...) tensor, drawn for
    every head from the global RNG and cut to the heads this rank holds: heads = (index,
    parts) under tensor parallelism (the rank holds the index-th of `parts` equal blocks of
    heads), None on one process.  Every rank draws the same whole mask, so the masks and the
    RNG's state after them are those of one process, whatever the layout."""
    import torch

    whole = list(shape)
    if heads is not None:
        whole[1] *= heads[1]
    keep = torch.rand(whole, device=device) >= p
    return keep if heads is None else keep.chunk(heads[1], dim=1)[heads[0]]
