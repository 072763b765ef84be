"""Planning a (dp, tp) layout for `hirune plan`: what a model saves and where, the parameters
each tensor-parallel rank holds, the tp collectives, the layouts and the recommendation.  The
data-parallel accounting it builds on (ZeRO memory per strategy, ring collectives, time) is
`distributed/planner.py`.

The GPUs form a dp x tp grid: each block is split over the tp ranks of a group (Megatron-LM,
Shoeybi et al. 2019, sec. 3) and the ZeRO stages (`planner`) shard what each tp rank holds
over the dp ranks. Parameters per tp rank are counted exactly from the model and its plan
(`params_per_rank`): colwise and colwise_gather Linears keep 1/tp of their weight and bias
rows, rowwise ones 1/tp of their weight columns and the whole bias (PyTorch's
RowwiseParallel replicates it), everything else is whole. Activations per rank are the
measured saved tensors, each divided by what the layout does to it (`Saved`): the tensors
inside a split region (attention, MLP) by tp, the residual stream and the per-token modules
on it (the norms) by tp only under sp, the inputs of the column-wise layers never (DTensor
saves the whole, all-gathered input: Megatron's sp keeps only the rank's tokens and gathers
them again in backward), what lies outside the blocks never. Korthikanti et al. 2022 (sec.
4, eq. 1-4) give the same split for a GPT layer, s b h (10 + 24/t + 5 a s / (h t)) bytes
without sp and s b h (34/t + 5 a s / (h t)) with it; hirune measures instead of using the
formula (no dropout in DiT, fused attention saves no a s^2 scores, adaLN).

Tensor parallelism communicates inside every block, on the critical path (not hidden by
the backward pass), over the fast intra-node link: per micro-batch and block, without sp an
all-reduce of the (b, s, h) output of each row-wise layer in forward (Megatron's g) and, in
backward, one all-reduce of the input gradient of each split region (Megatron's f: the
column-wise layers share the region's input, `tensor_parallel._shared_input`, so q, k and
v's partial gradients are summed before one all-reduce); with sp each
forward all-reduce becomes a reduce-scatter onto the tokens and each region's input an
all-gather (Korthikanti sec. 4.2.2: the same bytes), and q, k, v share the one gathered
input, so backward has one reduce-scatter per region.  DiT's adaLN (colwise_gather) adds
an all-gather of its (b, 6h) output and an all-reduce of its (b, h) input gradient.  These
are derived from the plan modules' measured input and output sizes (`PlanIO`) and checked
against the collectives of a real tp = 2 run (tests/distributed/test_planner_tp.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .planner import (BACKWARD_SHARE, LINKS, Collective, Memory, collectives_per_step, memory_per_gpu, ring_time,
                      ring_volume)
from .strategy import STRATEGIES, check_strategy

RECOMPUTE = ("none", "selective", "full")   # activation recomputation: off, attention's core, every block
# where a saved tensor was saved, which says how tensor parallelism divides it (see the module docstring)
WHERE = ("outside", "replicated", "split", "stream")
# plan kinds whose Linear keeps 1/tp of a parameter: (kind, parameter) -> the dimension that is split
_SHARD_DIM = {("colwise", "weight"): 0, ("colwise", "bias"): 0, ("colwise_gather", "weight"): 0,
              ("colwise_gather", "bias"): 0, ("rowwise", "weight"): 1,   # a rowwise bias stays whole
              ("rowwise_whole", "weight"): 1}


@dataclass(frozen=True)
class Saved:
    """A tensor autograd keeps for the backward pass, measured on one process (`training.measure`).

    where: "outside" the blocks (embeddings, final layer, loss): whole on every rank;
           "replicated": the input of a column-wise layer (q, k, v, the MLP's first): whole,
               also under sp, where it is the all-gathered input;
           "split": inside a split region (attention, MLP) or a row-wise layer: 1/tp;
           "stream": inside a block on the residual stream (norms, modulation, gates): 1/tp under
               sp when it carries the tokens (dim 1 of the block's input size), else whole.
    block: index in `models.blocks`, -1 outside.
    again: the storage was already counted under another `where` on one process: it is the same
           tensor on a rank too, unless sp cuts it into tokens: then the stream's copy is a shard
           and the column-wise layer's the gathered whole, and it counts twice."""
    bytes: float
    where: str
    tokens: bool = False
    block: int = -1
    again: bool = False

    def per_rank(self, tp: int, sp: bool) -> float:
        if self.again and not (sp and self.tokens):
            return 0.0
        split = self.where == "split" or (sp and self.where == "stream" and self.tokens)
        return self.bytes / tp if split else self.bytes


@dataclass(frozen=True)
class PlanIO:
    """The first input and the output (bytes, one process) of a module of the tensor-parallel
    plan: what its collectives move.  region_input: a colwise layer that reads its region's
    first argument (under sp it shares the one gathered input with its siblings)."""
    path: str
    kind: str
    block: int
    in_bytes: float
    out_bytes: float
    region_input: bool = False


@dataclass(frozen=True)
class Flops:
    """Forward multiply-adds x 2 of one module group: split (inside a region: 1/tp per rank),
    core (attention's softmax(q k^T) v: what selective recomputation recomputes)."""
    flops: float
    block: int = -1
    split: bool = False
    core: bool = False


@dataclass
class Footprint:
    """What one forward of the real model at `micro_batch` leaves and costs, measured on one
    process: saved tensors per recomputation mode, the plan modules' inputs and outputs, FLOPs."""
    micro_batch: int
    saved: dict[str, list[Saved]]
    io: list[PlanIO] = field(default_factory=list)
    flops: list[Flops] = field(default_factory=list)
    depth: int = 0                 # blocks
    dtype: str = "float32"         # of the activations as measured

    def scaled(self, micro_batch: int) -> Footprint:
        """At another micro-batch: everything here is linear in the batch (tests check it)."""
        k = micro_batch / self.micro_batch
        return replace(self, micro_batch=micro_batch,
                       saved={m: [replace(s, bytes=s.bytes * k) for s in v] for m, v in self.saved.items()},
                       io=[replace(i, in_bytes=i.in_bytes * k, out_bytes=i.out_bytes * k) for i in self.io],
                       flops=[replace(f, flops=f.flops * k) for f in self.flops])

    def deepened(self, blocks: list[int]) -> Footprint:
        """For a deeper model: block j of it is measured block blocks[j] (the same structure);
        what lies outside the blocks does not depend on the depth (tests check it)."""
        def expand(items):
            return [x for x in items if x.block < 0] + [replace(x, block=j) for j, b in enumerate(blocks)
                                                        for x in items if x.block == b]
        return replace(self, saved={m: expand(v) for m, v in self.saved.items()}, io=expand(self.io),
                       flops=expand(self.flops), depth=len(blocks))

    def activations(self, tp: int = 1, sp: bool = False, recompute: str = "none") -> float:
        """Bytes per rank kept between forward and backward.  Full recomputation keeps the block
        inputs and what lies outside (measured with recomputation on) plus, during backward,
        the one block being recomputed: the largest block of the plain run."""
        if recompute not in RECOMPUTE:
            raise ValueError(f"unknown recompute {recompute!r}; valid: {list(RECOMPUTE)}")
        if recompute not in self.saved:
            raise ValueError(f"recompute={recompute!r} was not measured for this model (it has no "
                             f"{'token attention' if recompute == 'selective' else 'blocks'})")
        kept = sum(s.per_rank(tp, sp) for s in self.saved[recompute])
        if recompute == "full":
            per_block = [0.0] * self.depth
            for s in self.saved["none"]:
                if s.block >= 0:
                    per_block[s.block] += s.per_rank(tp, sp)
            kept += max(per_block, default=0.0)
        return kept

    def forward_flops(self, tp: int = 1, recompute: str = "none") -> tuple[float, float]:
        """(forward FLOPs per rank, FLOPs recomputed in backward per rank) of one micro-batch."""
        def rank(f):
            return f.flops / tp if f.split else f.flops
        forward = sum(rank(f) for f in self.flops)
        again = {"none": 0.0, "selective": sum(rank(f) for f in self.flops if f.core),
                 "full": sum(rank(f) for f in self.flops if f.block >= 0)}[recompute]
        return forward, again

    def tokens_bytes(self) -> float:
        """Bytes of the residual stream (b, s, h) at a block's input (for the formulas' comparisons)."""
        return next((i.in_bytes for i in self.io if i.kind == "sequence_start"), 0.0)


def _plan_kinds(model, tp: int, sp: bool) -> dict[str, str]:
    if tp == 1 or not hasattr(model, "tensor_parallel_plan"):
        return {}
    return dict(model.tensor_parallel_plan(tp, sp))


def params_per_rank(model, tp: int = 1) -> int:
    """Parameters one tensor-parallel rank holds (rank 0: DTensor's Shard gives the first ranks
    the larger pieces), counted from the model's own plan; the total for tp = 1.  ValueError
    (from the plan) where tp does not split the model's heads or widths."""
    kinds = _plan_kinds(model, tp, False)
    count = 0
    for path, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            dim = _SHARD_DIM.get((kinds.get(path), name))
            count += p.numel() if dim is None else p.numel() // p.shape[dim] * math.ceil(p.shape[dim] / tp)
    return count


def partial_grad_params(model, tp: int, sp: bool) -> list[int]:
    """Sizes of the parameters whose gradients are partial sums over the tp group, each
    all-reduced once per step (`tensor_parallel.finish_gradients`): the per-head modules'
    and, under sp, the per-token ones'."""
    kinds = _plan_kinds(model, tp, sp)
    wanted = {"heads", "tokens"} if sp else {"heads"}
    modules = dict(model.named_modules())
    return [p.numel() for path, kind in kinds.items() if kind in wanted for p in modules[path].parameters()]


def tp_collectives(fp: Footprint, tp: int, sp: bool, grad_accum: int = 1,
                   partial_params: list[int] = ()) -> list[Collective]:
    """The tensor-parallel collectives of one optimizer step (`fp` at the per-GPU micro-batch),
    one row per kind of collective, derived from the plan modules' inputs and outputs (the
    module docstring; tests/distributed/test_planner_tp.py records a real run's)."""
    if tp == 1:
        return []
    rows: dict[tuple[str, str, str], list[float]] = {}

    def add(kind, phase, what, nbytes):
        rows.setdefault((kind, phase, what), []).append(nbytes)
    for io in fp.io:
        if io.kind == "colwise" and not io.region_input:   # a layer outside a region reduces its own
            add("all_reduce", "backward", "column-wise inputs' gradients (f)", io.in_bytes)
        elif io.kind in ("region", "region_whole") and not (sp and io.kind == "region"):
            add("all_reduce", "backward", "region inputs' gradients (f, once per region)", io.in_bytes)
        elif io.kind in ("rowwise", "rowwise_whole"):
            if sp and io.kind == "rowwise":
                add("reduce_scatter", "forward", "row-wise outputs onto the tokens", io.out_bytes)
                add("all_gather", "backward", "row-wise outputs' gradients", io.out_bytes)
            else:
                add("all_reduce", "forward", "row-wise outputs (g)", io.out_bytes)
        elif io.kind == "colwise_gather":
            add("all_gather", "forward", "gathered outputs (adaLN)", io.out_bytes)
            add("all_reduce", "backward", "gathered layers' inputs' gradients", io.in_bytes)
            if sp:
                add("reduce_scatter", "backward", "gathered outputs' gradients", io.out_bytes)
        elif sp and io.kind == "region":
            add("all_gather", "forward", "region inputs from the tokens", io.in_bytes)
            add("reduce_scatter", "backward", "region inputs' gradients onto the tokens", io.in_bytes)
        elif sp and io.kind == "sequence_start":
            add("all_gather", "backward", "first block's input gradient", io.in_bytes)
        elif sp and io.kind == "sequence_end":
            add("all_gather", "forward", "last block's output", io.out_bytes)
    out = [Collective(kind, sum(b), len(b), grad_accum, False, "tp", f"{what} [{phase}]")
           for (kind, phase, what), b in rows.items()]
    if partial_params:   # float32 gradients, one all-reduce each (the clipping's one-number sum left out)
        out.append(Collective("all_reduce", 4 * sum(partial_params), len(partial_params), 1, False, "tp",
                              "per-head / per-token parameters' gradients [step]"))
    return out


@dataclass(frozen=True)
class Layout:
    """gpus = dp x tp; each tp group splits every block, the strategy shards over dp."""
    gpus: int
    tp: int = 1
    sp: bool = False
    strategy: str = "zero3"
    recompute: str = "none"

    @property
    def dp(self) -> int:
        return self.gpus // self.tp

    def name(self) -> str:
        return (f"tp={self.tp}{' sp' if self.sp else ''} dp={self.dp} {self.strategy}"
                f"{'' if self.recompute == 'none' else ' recompute=' + self.recompute}")


def check_layout(layout: Layout) -> None:
    """ValueError naming the valid values: tp must divide the GPUs, sp needs tp >= 2, and over
    several tp groups only FSDP2 (zero2, zero3) runs the dp dimension (`strategy.check_composition`)."""
    from .runtime import World
    from .strategy import check_composition
    from .tensor_parallel import check_grid

    check_strategy(layout.strategy)
    if layout.recompute not in RECOMPUTE:
        raise ValueError(f"unknown recompute {layout.recompute!r}; valid: {list(RECOMPUTE)}")
    world = World(size=layout.gpus, backend="nccl", tp=layout.tp)
    check_grid(layout.gpus, layout.tp)
    if layout.sp and layout.tp < 2:
        raise ValueError(f"sp shards the sequence over the tensor-parallel ranks and needs tp >= 2, got tp={layout.tp}")
    check_composition(world, layout.strategy)


@dataclass
class LayoutPlan:
    layout: Layout
    micro_batch: int               # per GPU (a tp group reads the same examples)
    params_per_gpu: int            # before the ZeRO stage's sharding
    memory: Memory
    collectives: list[tuple[Collective, int, float, float]]   # (collective, group size, MB per GPU, seconds)
    compute_seconds: float
    step_seconds: float
    efficiency: float              # ideal (one GPU's compute / gpus) over the step

    def fits(self, memory_bytes: float) -> bool:
        return self.memory.total <= memory_bytes

    def as_dict(self) -> dict:
        return {"layout": {**asdict(self.layout), "dp": self.layout.dp, "name": self.layout.name()},
                "micro_batch": self.micro_batch, "params_per_gpu": self.params_per_gpu,
                "memory": {**asdict(self.memory), "total": self.memory.total},
                "collectives": [{**asdict(c), "group_size": n, "mb_per_gpu": mb, "seconds": t}
                                for c, n, mb, t in self.collectives],
                "compute_seconds": self.compute_seconds, "step_seconds": self.step_seconds,
                "efficiency": self.efficiency}


def plan_layout(fp: Footprint, model, layout: Layout, *, global_batch: int, grad_accum: int = 1,
                precision: str = "mixed", seconds_per_flop: float, intra: tuple[float, float] = LINKS["nvlink"],
                inter: tuple[float, float] = LINKS["infiniband"], gpus_per_node: int = 8, units: int = 1,
                overlap: bool = True, ema: bool = True) -> LayoutPlan:
    """Memory, communication and time of one optimizer step of `model` (a module or a meta-device
    copy: only its parameters and plan are read) in `layout`.  Time: compute from the counted
    FLOPs at `seconds_per_flop` (backward = 2 forwards, plus what recomputation redoes), the
    tp collectives exposed, the dp ones hidden in the backward pass as in `plan`; the dp ring
    runs on the `inter`-node link once dp x tp spans more than one node of `gpus_per_node`.
    intra / inter: (GB/s, microseconds per hop)."""
    check_layout(layout)
    tp, dp = layout.tp, layout.dp
    if global_batch % (grad_accum * dp):
        raise ValueError(f"the global batch {global_batch} must be divisible by grad_accum x dp = {grad_accum} x {dp}")
    micro = global_batch // (grad_accum * dp)
    here = fp.scaled(micro)
    p_rank = params_per_rank(model, tp)
    memory = memory_per_gpu(p_rank, layout.strategy, dp, precision,
                            here.activations(tp, layout.sp, layout.recompute), ema)
    colls = [(c, tp, intra) for c in tp_collectives(here, tp, layout.sp, grad_accum,
                                                    partial_grad_params(model, tp, layout.sp))]
    dp_link = inter if layout.gpus > gpus_per_node else intra
    colls += [(c, dp, dp_link) for c in collectives_per_step(p_rank, layout.strategy, precision, grad_accum, units)]
    forward, again = here.forward_flops(tp, layout.recompute)
    compute = grad_accum * (3 * forward + again) * seconds_per_flop
    rows, exposed, hidden = [], 0.0, 0.0
    for c, n, (bw, lat) in colls:
        t = ring_time(c, n, bw, lat)
        rows.append((c, n, ring_volume(c, n) / 1e6 if n > 1 else 0.0, t))
        if c.overlappable and overlap:
            hidden += t
        else:
            exposed += t
    step = compute + exposed + max(0.0, hidden - BACKWARD_SHARE * compute)
    ideal = 3 * fp.scaled(global_batch).forward_flops()[0] * seconds_per_flop / layout.gpus
    return LayoutPlan(layout, micro, p_rank, memory, rows, compute, step, ideal / step)


def layouts(gpus: int, model, gpus_per_node: int = 8, recompute: tuple[str, ...] = RECOMPUTE) -> list[Layout]:
    """Every layout worth comparing: tp among the divisors of `gpus` up to one node (and those the
    model's plan accepts), sp off / on, each strategy valid there, each recomputation mode."""
    out = []
    for tp in (d for d in range(1, min(gpus, gpus_per_node) + 1) if gpus % d == 0):
        for sp in ((False,) if tp == 1 else (False, True)):
            try:
                _plan_kinds(model, tp, sp)
            except ValueError:       # tp does not split the heads / widths, or sp the tokens
                continue
            for strategy in STRATEGIES:
                for r in recompute:
                    candidate = Layout(gpus, tp, sp, strategy, r)
                    try:
                        check_layout(candidate)
                    except ValueError:
                        continue
                    out.append(candidate)
    return out


RECOMMEND_RULE = ("among the layouts whose memory per GPU fits, the shortest estimated step (the most examples "
                  "a second at the same global batch); ties go to the smaller tp, then to less recomputation")


def recommend(fp: Footprint, model, gpus: int, memory_bytes: float, **options) -> tuple[LayoutPlan | None,
                                                                                       list[LayoutPlan]]:
    """(the recommended plan or None when nothing fits, every plan sorted by step time):
    `RECOMMEND_RULE` over `layouts`; options as in `plan_layout`."""
    kinds = RECOMPUTE if fp.saved.keys() >= set(RECOMPUTE) else tuple(m for m in RECOMPUTE if m in fp.saved)
    candidates = layouts(gpus, model, options.get("gpus_per_node", 8), kinds)
    plans = []
    for c in candidates:
        try:
            plans.append(plan_layout(fp, model, c, **options))
        except ValueError:            # the batch does not split over this dp
            continue
    plans.sort(key=lambda p: (round(p.step_seconds, 9), p.layout.tp, RECOMPUTE.index(p.layout.recompute),
                              STRATEGIES.index(p.layout.strategy), p.layout.sp))
    fitting = [p for p in plans if p.fits(memory_bytes)]
    return (fitting[0] if fitting else None), plans
