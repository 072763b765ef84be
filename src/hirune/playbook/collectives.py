"""Every collective of torch.distributed on N gloo processes: each rank's tensor before and after.

    broadcast(t, src)        every rank ends with src's t
    reduce(t, dst)           dst ends with the sum over ranks; the others: see below
    all_reduce(t)            every rank ends with the sum
    gather(t, list, dst)     dst receives every rank's t, in rank order
    all_gather(list, t)      every rank receives every rank's t
    scatter(t, list, src)    rank r receives src's list[r]
    reduce_scatter(t, list)  rank r receives the sum over ranks of their list[r]
    all_to_all(out, in)      rank r receives in[r] of every rank: a transpose of the ranks' lists
    barrier()                no rank leaves before every rank has arrived

`reduce` promises only the destination's result.  NCCL leaves the other ranks' tensors as they
were; gloo uses them as scratch space for its partial sums.  To see which ranks' values each
element of a non-destination tensor holds, rank r starts `reduce` with every element 2^r: a
value after the call is a sum of distinct powers of two, so its binary digits name the ranks
summed into it (`ranks_in`).  `reduce_observation` reports what this torch's gloo leaves.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from .report import Report, pyplot, save

OPTIONAL = ("reduce_scatter", "all_to_all")   # not implemented by gloo in some torch versions


def values(rank: int, n: int = 3) -> torch.Tensor:
    """Rank r's tensor: 10 r + 1, 10 r + 2, ... (the tens digit names the rank)."""
    return torch.arange(1, n + 1) + 10 * rank


def run_all(rank: int, world: int, reduce_elements: int = 6) -> dict:
    """On one rank of a gloo group: {collective: {"before": ..., "after": ...}} (lists of ints)."""
    out = {}

    def record(name, before, fn):
        snapshot = [x.tolist() if isinstance(x, torch.Tensor) else x for x in before] \
            if isinstance(before, list) else before.tolist()
        try:
            after = fn()
        except RuntimeError as e:   # a collective this backend does not implement
            out[name] = {"before": snapshot, "after": None, "unsupported": str(e).splitlines()[0]}
            return
        out[name] = {"before": snapshot, "after": after}

    t = values(rank)
    record("broadcast", t, lambda: (dist.broadcast(t, src=0), t.tolist())[1])
    r = torch.full((reduce_elements,), 2 ** rank)
    record("reduce", r, lambda: (dist.reduce(r, dst=0), r.tolist())[1])
    a = values(rank)
    record("all_reduce", a, lambda: (dist.all_reduce(a), a.tolist())[1])
    g = values(rank)
    parts = [torch.empty_like(g) for _ in range(world)] if rank == 0 else None
    record("gather", g, lambda: (dist.gather(g, parts, dst=0), [p.tolist() for p in parts] if parts else None)[1])
    parts2 = [torch.empty_like(g) for _ in range(world)]
    record("all_gather", g, lambda: (dist.all_gather(parts2, g), [p.tolist() for p in parts2])[1])
    pieces = [values(i) for i in range(world)] if rank == 0 else None
    got = torch.zeros(3, dtype=torch.int64)
    record("scatter", pieces if pieces else got,
           lambda: (dist.scatter(got, pieces, src=0), got.tolist())[1])
    inputs = [torch.tensor([10 * rank + i]) for i in range(world)]
    got_rs = torch.zeros(1, dtype=torch.int64)
    record("reduce_scatter", inputs, lambda: (dist.reduce_scatter(got_rs, inputs), got_rs.tolist())[1])
    outputs = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    record("all_to_all", inputs, lambda: (dist.all_to_all(outputs, inputs), [o.tolist() for o in outputs])[1])
    dist.barrier()
    start = time.perf_counter()
    time.sleep(0.1 * rank)   # rank r arrives 0.1 r s late; every rank leaves when the last arrives
    arrived = time.perf_counter() - start
    dist.barrier()
    out["barrier"] = {"before": f"arrived {arrived:.2f}s", "after": f"left {time.perf_counter() - start:.2f}s"}
    return out


def ranks_in(value: int) -> list[int]:
    """The ranks whose 2^rank make up `value` (the binary digits that are 1)."""
    return [r for r in range(value.bit_length()) if value >> r & 1]


def reduce_observation(results: list[dict], dst: int = 0) -> dict:
    """What `reduce` left on each rank: the destination's sum, and on the others whether their
    tensor changed and which ranks' values each element now sums."""
    world = len(results)
    total = 2 ** world - 1
    after = {r: res["reduce"]["after"] for r, res in enumerate(results)}
    before = {r: res["reduce"]["before"] for r, res in enumerate(results)}
    others = [r for r in range(world) if r != dst]
    return {"destination_is_sum": all(v == total for v in after[dst]),
            "changed": {r: after[r] != before[r] for r in others},
            "partial_sums": {r: [ranks_in(v) for v in after[r]] for r in others},
            "all_are_subset_sums": all(0 < v <= total for r in others for v in after[r])}


def playbook(world: int = 3, reduce_elements: int = 6) -> Report:
    from .launch import launch

    results = launch(run_all, world, reduce_elements=reduce_elements)
    seen = reduce_observation(results)
    rows = []
    for name in results[0]:
        for r, res in enumerate(results):
            entry = res[name]
            after = entry["after"] if "unsupported" not in entry else "unsupported: " + entry["unsupported"]
            rows.append([name, r, entry["before"], after])
    overwritten = [r for r, c in seen["changed"].items() if c]
    notes = [f"reduce (dst 0): rank r started with 2^r in each of {reduce_elements} elements; the destination "
             f"{'holds' if seen['destination_is_sum'] else 'does NOT hold'} the sum {2 ** world - 1}."]
    if overwritten:
        notes.append(f"gloo overwrote the non-destination tensors of ranks {overwritten} with partial sums "
                     "(NCCL leaves them unchanged); the ranks summed into each element:")
        notes += [f"  rank {r}: {seen['partial_sums'][r]}" for r in overwritten]
    else:
        notes.append("this torch's gloo left every non-destination tensor unchanged (as NCCL does)")
    for name in OPTIONAL:
        if "unsupported" in results[0][name]:
            notes.append(f"{name}: gloo in this torch does not implement it ({results[0][name]['unsupported']})")
    return Report("collectives", f"collectives on {world} gloo processes (torch {torch.__version__})",
                  ["collective", "rank", "before", "after"], rows, notes,
                  {"world": world, "results": results, "reduce": seen},
                  lambda path: plot(results, path))


def plot(results: list[dict], path) -> None:
    """A grid: one row per collective, one column per rank, 'before -> after' in each cell."""
    plt = pyplot()
    names = list(results[0])
    fig, ax = plt.subplots(figsize=(3.3 * len(results) + 1.2, 0.45 * len(names) + 0.8))
    ax.axis("off")

    def short(x):
        return "-" if x is None else str(x).replace(", ", ",")

    text = [[f"{short(res[n]['before'])} -> {short(res[n]['after'])}" for res in results] for n in names]
    tab = ax.table(cellText=text, rowLabels=names, colLabels=[f"rank {r}" for r in range(len(results))],
                   loc="center", cellLoc="left")
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.scale(1, 1.4)
    ax.set_title("each rank's tensor before -> after (reduce: dst 0, rank r starts with 2^r)", fontsize=9)
    save(fig, path)
