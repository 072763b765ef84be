"""A ring all-reduce written by hand, against dist.all_reduce.

N ranks stand in a ring; rank r sends only to r + 1 and receives only from r - 1 (mod N).  The
tensor is cut into N chunks c_0 .. c_{N-1}.

    reduce-scatter, steps k = 0 .. N-2:  send c_{r-k}, receive c_{r-k-1} and add it in.
        After N - 1 steps rank r holds the sum over all ranks of chunk c_{r+1}.
    all-gather, steps k = 0 .. N-2:      send c_{r+1-k} (complete), receive c_{r-k}, copy it.
        After N - 1 more steps every rank holds every complete chunk.

Each step sends one chunk, K / N of the K bytes, so each rank sends 2 (N - 1) K / N bytes in all:
less than 2 K for any N, which is why the ring is bandwidth-optimal (Patarasuk & Yuan 2009;
the NCCL and Horovod all-reduce).  When N does not divide the element count the chunks differ
by one element (torch.tensor_split) and the ranks send slightly different amounts: each sends
2 (N - 1) chunks, never more than 2 (N - 1) ceil(K_elements / N) elements.

`ring_all_reduce` is a teaching implementation; the trainers use dist.all_reduce.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from .report import Report, pyplot, save


def exchange(send: torch.Tensor, recv: torch.Tensor, rank: int, world: int) -> int:
    """Send `send` to the next rank while receiving `recv` from the previous one; bytes sent."""
    ops = [dist.P2POp(dist.isend, send.contiguous(), (rank + 1) % world),
           dist.P2POp(dist.irecv, recv, (rank - 1) % world)]
    for work in dist.batch_isend_irecv(ops):
        work.wait()
    return send.numel() * send.element_size()


def ring_all_reduce(t: torch.Tensor, rank: int, world: int) -> int:
    """Sum `t` over the ranks in place (a flat, contiguous tensor); returns the bytes this rank sent."""
    chunks = list(torch.tensor_split(t, world))     # views: adding into them adds into t
    sent = 0
    for k in range(world - 1):                      # reduce-scatter
        out, into = chunks[(rank - k) % world], chunks[(rank - k - 1) % world]
        incoming = torch.empty_like(into)
        sent += exchange(out, incoming, rank, world)
        into += incoming
    for k in range(world - 1):                      # all-gather
        out, into = chunks[(rank + 1 - k) % world], chunks[(rank - k) % world]
        incoming = torch.empty_like(into)
        sent += exchange(out, incoming, rank, world)
        into.copy_(incoming)
    return sent


def check(rank: int, world: int, sizes=(12, 1000, 1001, 65536), dtypes=("int64", "float32"),
          impl: Callable[[torch.Tensor, int, int], int] = ring_all_reduce) -> list[dict]:
    """On one rank: for each size and dtype, `impl` against dist.all_reduce on the same tensor."""
    rows = []
    for n in sizes:
        for name in dtypes:
            dtype = getattr(torch, name)
            g = torch.Generator().manual_seed(1000 * rank + n)
            x = torch.randint(-1000, 1000, (n,), generator=g).to(dtype) if not dtype.is_floating_point \
                else torch.rand(n, generator=g, dtype=dtype) - 0.5   # |sum| < N / 2: rounding well under 1e-6
            mine, theirs = x.clone(), x.clone()
            sent = impl(mine, rank, world)
            dist.all_reduce(theirs)
            rows.append({"elements": n, "dtype": name, "bytes": x.numel() * x.element_size(), "sent": sent,
                         "max_abs_diff": float((mine.double() - theirs.double()).abs().max())})
    return rows


def formula(nbytes: int, world: int) -> float:
    """2 (N - 1) K / N: the bytes each rank sends in a ring all-reduce of K bytes."""
    return 2 * (world - 1) * nbytes / world


def agree(rows: list[dict], tol: float = 1e-6) -> list[str]:
    """The checks that failed: integers exactly equal, floats within `tol`."""
    return [f"N={r['world']} {r['dtype']} x {r['elements']}: max |ring - all_reduce| = {r['max_abs_diff']:g}"
            for r in rows if r["max_abs_diff"] > (0 if r["dtype"].startswith("int") else tol)]


def measure(worlds=(2, 3, 4), sizes=(12, 1000, 1001, 65536), impl=ring_all_reduce) -> list[dict]:
    """One row per (N, size, dtype): bytes sent (least and most over the ranks), the formula, the
    largest difference from dist.all_reduce on any rank."""
    from .launch import launch

    rows = []
    for world in worlds:
        per_rank = launch(check, world, sizes=sizes, impl=impl)
        for i, row in enumerate(per_rank[0]):
            sent = [ranks[i]["sent"] for ranks in per_rank]
            rows.append({"world": world, **{k: row[k] for k in ("elements", "dtype", "bytes")},
                         "sent_min": min(sent), "sent_max": max(sent), "formula": formula(row["bytes"], world),
                         "max_abs_diff": max(ranks[i]["max_abs_diff"] for ranks in per_rank)})
    return rows


def playbook(worlds: tuple[int, ...] = (2, 3, 4), sizes: tuple[int, ...] = (12, 1000, 1001, 65536)) -> Report:
    rows = measure(worlds, sizes)
    bad = agree(rows)
    notes = ["sent: bytes each rank sent (least, most over the ranks); formula 2 (N-1) K / N.",
             "Where N does not divide the element count the chunks differ by one element and so do the ranks.",
             "every result equals dist.all_reduce (integers exactly, float32 within 1e-6)" if not bad else
             "MISMATCH: " + "; ".join(bad)]
    return Report("ring-allreduce", "a hand-written ring all-reduce on gloo against dist.all_reduce",
                  ["N", "elements", "dtype", "K bytes", "sent min", "sent max", "2(N-1)K/N", "max |diff|"],
                  [[r["world"], r["elements"], r["dtype"], r["bytes"], r["sent_min"], r["sent_max"], r["formula"],
                    r["max_abs_diff"]] for r in rows], notes, {"rows": rows}, lambda path: plot(rows, path))


def plot(rows: list[dict], path) -> None:
    """Bytes sent per rank over N, as a fraction of K, against 2 (N - 1) / N."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    worlds = sorted({r["world"] for r in rows})
    grid = torch.linspace(min(worlds), max(worlds), 50)
    ax.plot(grid, 2 * (grid - 1) / grid, "k-", lw=1, label="2 (N-1) / N")
    for (n, dtype) in sorted({(r["elements"], r["dtype"]) for r in rows}):
        pts = [r for r in rows if r["elements"] == n and r["dtype"] == dtype]
        ax.plot([r["world"] for r in pts], [r["sent_max"] / r["bytes"] for r in pts], "o", ms=4, alpha=0.7,
                label=f"{n} x {dtype}")
    ax.set_xlabel("ranks N")
    ax.set_ylabel("bytes sent per rank / K")
    ax.set_xticks(worlds)
    ax.legend(fontsize=7)
    ax.set_title("ring all-reduce: bytes each rank sends", fontsize=9)
    save(fig, path)
