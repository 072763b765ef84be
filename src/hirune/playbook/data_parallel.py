"""Data parallelism written by hand three ways, each against torch's DistributedDataParallel.

Every rank holds the whole model (the same initial weights), takes its slice of the global
batch, and after the backward pass must hold the gradient of the whole batch's mean loss,
which is the mean over ranks of the local gradients (equal slices):

    g = (1 / N) sum_r g_r        one all-reduce (sum) of every gradient, divided by N

Then every rank takes the same optimizer step and the replicas stay equal.  The three ways
differ only in when the all-reduces start and how many there are:

- `Blocking`: after backward, one all_reduce per parameter, each waited for.  Simple; the
  network idles during backward and every small tensor pays the latency of a call.
- `Overlapped`: `register_post_accumulate_grad_hook` fires as soon as a parameter's gradient
  is complete (a shared weight: after its last use) and launches all_reduce(async_op=True),
  so communication overlaps the rest of the backward pass; `finish` waits before the step.
- `Buckets`: the hooks copy ready gradients into a flat bucket; when it holds at least
  `bucket_bytes` one async all_reduce sends it, `finish` flushes the last, partly filled bucket,
  waits, and copies the sums back.  Fewer, larger calls: DDP's design (Li et al. 2020, "PyTorch
  Distributed", sec. 3.2), whose buckets are reported beside these.

Each divides by N before the sum, as DDP's default communication hook does, so with N = 2 the
results are bitwise DDP's (a + b = b + a).  With N = 3 the sums are added in another order than
DDP's (one bucket against per-parameter calls) and the gradients differ in the last bit (about
1e-7); AdamW then turns that into a visible difference in one place: the key bias, whose gradient
is zero in exact arithmetic (adding b_k to every key adds q . b_k to every score of a query, which
the softmax ignores), so what the ranks sum is rounding noise, and Adam's m / sqrt(v) scales noise
to steps of size lr.  `compare` names the parameter that differs most.

`Traffic` counts each variant's calls and bytes.  These are teaching implementations; hirune's
trainer uses torch's DDP (`distributed/strategy.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Traffic:
    """Collectives a rank called, and the bytes of the tensors it passed to them."""
    calls: int = 0
    bytes: int = 0

    def count(self, t: torch.Tensor) -> None:
        self.calls += 1
        self.bytes += t.numel() * t.element_size()

    def all_reduce(self, t: torch.Tensor, async_op: bool = False):
        self.count(t)
        return dist.all_reduce(t, async_op=async_op)

    def broadcast(self, t: torch.Tensor, src: int):
        self.count(t)
        return dist.broadcast(t, src=src)


class Blocking:
    """After backward: for each parameter, grad /= N, then all_reduce(grad), waited for."""

    def __init__(self, model: nn.Module, world: int, **_):
        self.params, self.world, self.traffic = [p for p in model.parameters() if p.requires_grad], world, Traffic()

    def finish(self) -> None:
        for p in self.params:
            p.grad.div_(self.world)
            self.traffic.all_reduce(p.grad)


class Overlapped:
    """During backward: each gradient's all_reduce is launched (async) the moment it is complete."""

    def __init__(self, model: nn.Module, world: int, **_):
        self.world, self.traffic, self.pending = world, Traffic(), []
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self.ready)

    def ready(self, p: torch.Tensor) -> None:
        p.grad.div_(self.world)
        self.pending.append(self.traffic.all_reduce(p.grad, async_op=True))

    def finish(self) -> None:
        for work in self.pending:
            work.wait()
        self.pending.clear()


class Buckets:
    """Ready gradients fill flat buckets of at least `bucket_bytes`; one async all_reduce per bucket."""

    def __init__(self, model: nn.Module, world: int, bucket_bytes: int = 2**16, **_):
        self.world, self.bucket_bytes, self.traffic = world, bucket_bytes, Traffic()
        self.filling: list[torch.Tensor] = []     # parameters whose gradients wait in the open bucket
        self.pending: list[tuple] = []            # (work, flat, parameters) of launched buckets
        self.sizes: list[int] = []                # bytes of each bucket launched
        for p in model.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self.ready)

    def ready(self, p: torch.Tensor) -> None:
        self.filling.append(p)
        if sum(q.grad.numel() * q.grad.element_size() for q in self.filling) >= self.bucket_bytes:
            self.launch()

    def launch(self) -> None:
        flat = torch.cat([p.grad.reshape(-1) for p in self.filling]).div_(self.world)
        self.sizes.append(flat.numel() * flat.element_size())
        self.pending.append((self.traffic.all_reduce(flat, async_op=True), flat, self.filling))
        self.filling = []

    def finish(self) -> None:
        self.flush()
        self.wait_all()

    def flush(self) -> None:
        if self.filling:          # the last bucket is rarely full: flush it
            self.launch()

    def wait_all(self) -> None:
        """Wait for every bucket's all-reduce and copy the averaged gradients back."""
        for work, flat, params in self.pending:
            work.wait()
            offset = 0
            for p in params:
                p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
                offset += p.grad.numel()
        self.pending.clear()


VARIANTS = {"blocking": Blocking, "overlapped": Overlapped, "buckets": Buckets}


@dataclass(frozen=True)
class Setup:
    """The model and data every variant trains: a small GPT, AdamW, `steps` steps of a global batch."""
    layers: int = 2
    hidden: int = 32
    heads: int = 4
    vocab: int = 64
    seq: int = 16
    batch: int = 12          # global: each of N ranks takes batch / N sequences
    steps: int = 3
    lr: float = 1e-2
    seed: int = 0

    def config(self):
        from .gpt import GPTConfig

        return GPTConfig(vocab=self.vocab, seq_len=self.seq, layers=self.layers, hidden=self.hidden,
                         heads=self.heads)

    def build(self):
        """The model and its AdamW, the same weights on every rank (the same seed)."""
        from .gpt import GPT

        torch.manual_seed(self.seed)
        model = GPT(self.config())
        return model, torch.optim.AdamW(model.parameters(), lr=self.lr)

    def local_batch(self, step: int, rank: int, world: int) -> torch.Tensor:
        """Rank `rank`'s slice of step `step`'s global batch (every rank draws the whole batch)."""
        from .gpt import random_tokens

        if self.batch % world:
            raise ValueError(f"batch={self.batch} must be divisible by the {world} ranks")
        per = self.batch // world
        return random_tokens(self.config(), self.batch, seed=self.seed + 1 + step)[rank * per:(rank + 1) * per]


def train(model: nn.Module, optimizer, setup: Setup, rank: int, world: int,
          finish=lambda: None) -> dict[str, torch.Tensor]:
    """`setup.steps` steps on this rank's slices; `finish` synchronises the gradients after
    backward.  Returns the synchronised gradients of the first step."""
    from .gpt import loss_fn

    first = {}
    for step in range(setup.steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, setup.local_batch(step, rank, world)).backward()
        finish()
        if step == 0:
            first = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
    return first


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in b)


def outside_key_bias(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max |a - b| over every parameter entry but the key biases (the middle third of each qkv
    bias), whose exact gradient is zero: what the ranks sum there is rounding noise."""
    def keep(name, t):
        if not name.endswith("qkv.bias"):
            return t
        third = t.shape[0] // 3
        return torch.cat([t[:third], t[2 * third:]])

    return max(float((keep(n, a[n]) - keep(n, b[n])).abs().max()) for n in b)


def worst(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> str:
    """The name of the tensor where a and b differ most."""
    return max(b, key=lambda n: float((a[n] - b[n]).abs().max()))


def parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def compare(rank: int, world: int, setup: Setup = Setup(), variants: dict | None = None,
            bucket_bytes: int = 2**14) -> dict:
    """On one rank: DDP, then each variant from the same start; per variant the largest
    |gradient - DDP's| at the first step and |parameter - DDP's| after the last, its traffic and
    bucket sizes."""
    from torch.nn.parallel import DistributedDataParallel

    model, optimizer = setup.build()
    ddp = DistributedDataParallel(model, bucket_cap_mb=bucket_bytes / 2**20)
    grads = {n.removeprefix("module."): g for n, g in train(ddp, optimizer, setup, rank, world).items()}
    reference = parameters(model)
    out = {"ddp": {"buckets": [int(b) for b in ddp._get_ddp_logging_data()["bucket_sizes"].split(", ")],
                   "params": sum(p.numel() for p in model.parameters())}}
    for name, variant in (variants or VARIANTS).items():
        model, optimizer = setup.build()
        sync = variant(model, world, bucket_bytes=bucket_bytes)
        first = train(model, optimizer, setup, rank, world, sync.finish)
        per_step = sync.traffic.calls // setup.steps
        params = parameters(model)
        out[name] = {"grad_diff": max_diff(first, grads), "param_diff": max_diff(params, reference),
                     "param_diff_outside_key_bias": outside_key_bias(params, reference),
                     "worst": worst(params, reference),
                     "calls_per_step": sync.traffic.calls / setup.steps,
                     "bytes_per_step": sync.traffic.bytes / setup.steps,
                     "buckets": sync.sizes[-per_step:] if hasattr(sync, "sizes") else None}
    return out


def failures(results: list[dict], tol: float = 1e-6) -> list[str]:
    """The variants that differ from DDP by more than `tol` on some rank, in the gradients of the
    first step or in the parameters after the last.  Both are compared: Adam's update
    m / (sqrt(v) + eps) hardly changes when every gradient is scaled by the same factor, so a
    variant that forgets the 1 / N ends with nearly DDP's weights but not with its gradients."""
    out = []
    for rank, result in enumerate(results):
        for name, r in result.items():
            if name != "ddp" and max(r["grad_diff"], r["param_diff"]) > tol:
                out.append(f"rank {rank} {name}: gradients differ by {r['grad_diff']:.2e}, "
                           f"parameters by {r['param_diff']:.2e} (worst {r['worst']})")
    return out


def playbook(world: int = 2, steps: int = 3, bucket_bytes: int = 2**14, layers: int = 2, hidden: int = 32,
             batch: int = 12):
    from .launch import launch
    from .report import Report

    setup = Setup(layers=layers, hidden=hidden, batch=batch, steps=steps)
    results = launch(compare, world, setup=setup, bucket_bytes=bucket_bytes)
    ddp = results[0]["ddp"]
    rows = [["ddp (torch)", len(ddp["buckets"]), sum(ddp["buckets"]), ddp["buckets"], 0.0, 0.0, 0.0, "-"]]
    for name in VARIANTS:
        ranks = [r[name] for r in results]
        grad, param = max(r["grad_diff"] for r in ranks), max(r["param_diff"] for r in ranks)
        rows.append([name, ranks[0]["calls_per_step"], ranks[0]["bytes_per_step"], ranks[0]["buckets"] or "-",
                     grad, param, max(r["param_diff_outside_key_bias"] for r in ranks),
                     max(ranks, key=lambda r: r["param_diff"])["worst"] if param else "-"])
    ok = not failures(results)
    notes = [f"{world} gloo ranks, global batch {batch} ({batch // world} a rank), {steps} AdamW steps of a GPT with "
             f"{ddp['params']} parameters; bucket_bytes {bucket_bytes} (DDP: bucket_cap_mb = the same)",
             "DDP's buckets as DDP logs them (its first bucket is capped at 1 MiB, not bucket_cap_mb, so this small "
             "model is one bucket)",
             "every variant equals DDP within 1e-6 in every parameter" if ok else
             "a variant differs from DDP by more than 1e-6: with N > 2 the sums are added in another order, and "
             "AdamW turns the rounding noise of the key bias (whose exact gradient is 0) into steps of size lr; "
             "see the column without the key biases"]
    return Report("data-parallel", "hand-written data parallelism against DistributedDataParallel",
                  ["variant", "all-reduces/step", "bytes/step", "bucket bytes", "max |grad diff| step 1",
                   "max |param diff|", "without key biases", "worst parameter"], rows, notes, {"results": results},
                  lambda path: plot(rows, path))


def plot(rows: list[list], path) -> None:
    from .report import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    names = [r[0] for r in rows]
    ax.bar(names, [r[1] for r in rows], color=["0.6"] + ["tab:blue"] * (len(rows) - 1))
    for i, r in enumerate(rows):
        ax.annotate(f"{r[2] / 1024:.0f} KiB", (i, r[1]), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("all-reduce calls per step")
    ax.set_title("gradient all-reduces per step (bytes above each bar)", fontsize=9)
    save(fig, path)
