"""What `hirune plan` measures of a run on this machine: its parameters, its FSDP2 units,
the activation bytes autograd saves between forward and backward at the per-GPU
micro-batch (with saved-tensor hooks, per block, so that recomputation adds the one block
recomputed at a time), the wall time of an optimizer step, and, on a GPU, the peak memory
of a real step against the planner's estimate (`distributed.planner`).

`trace` is the measurement behind tensor and sequence parallelism: one forward (and loss)
of the real model on one process, every saved tensor tagged with the module that saved it
(`layouts.Saved`: outside the blocks, a column-wise layer's input, inside a split region,
or on a block's residual stream), the inputs and outputs of the plan's modules (what the
tp collectives move, `layouts.PlanIO`) and the forward FLOPs of the matrix products and
attention (`layouts.Flops`).  `network_footprint` plans a network too large to run here
(DiT-XL/2): it is measured at the smallest depth that has each kind of block and deepened
block by block, at a small micro-batch and scaled linearly (`Footprint.deepened`,
`Footprint.scaled`; tests/distributed/test_planner_tp.py checks both against direct
measurements); its parameters are counted on the meta device, at full depth.
"""

from __future__ import annotations

from collections.abc import Callable

from ..distributed.layouts import RECOMPUTE, Flops, Footprint, PlanIO, Saved
from ..distributed.planner import memory_per_gpu
from ..families import Batch
from .trainer import Trainer

# the calls whose FLOPs are counted: (B, N, in) x (in, out) products, convolutions, attention
_COUNTED = ("linear", "conv1d", "conv2d", "conv3d", "matmul", "mm", "bmm", "scaled_dot_product_attention")


def activation_bytes(run, micro_batch: int) -> int:
    """Bytes autograd keeps for the backward pass of one micro-batch: every tensor saved
    during a forward and loss of the real model, counted once per storage (views share),
    the weights themselves excepted (they are counted as weights).  With recomputation
    (`TrainConfig.recompute`) that is what stays between forward and backward: the block
    inputs and whatever lies outside the blocks."""
    return saved_bytes(run, micro_batch)[0]


def saved_bytes(run, micro_batch: int) -> tuple[int, list[int]]:
    """(activation_bytes, the part of it saved inside each block of `models.blocks`): `trace` of
    the run's model as it is (with its own recomputation, if any)."""
    fp = run_footprint(run, micro_batch, ("none",))
    per_block = [0] * fp.depth
    for s in fp.saved["none"]:
        if s.block >= 0:
            per_block[s.block] += s.per_rank(1, False)
    return int(fp.activations()), [int(b) for b in per_block]


def _nbytes(x) -> int:
    import torch

    return x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0


def _ancestors(path: str) -> list[str]:
    """"a.b.c" -> ["a.b.c", "a.b", "a", ""]: a module and the modules around it, nearest first."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts), -1, -1)]


def _placement(path: str, kinds: dict[str, str], block_of: dict[str, int]) -> tuple[str, bool]:
    """(`Saved.where` of a tensor saved while the module at `path` runs, whether its FLOPs split)."""
    for a in _ancestors(path):
        kind = kinds.get(a)
        if kind in ("colwise", "colwise_gather"):
            return "replicated", True   # the layer saves its whole input; its outputs are split
        if kind in ("rowwise", "rowwise_whole", "region", "region_whole"):
            return "split", True
    return ("stream" if block_of.get(path, -1) >= 0 else "outside"), False


def trace(model, loss: Callable[[], object], modes: tuple[str, ...] = RECOMPUTE) -> Footprint:
    """One forward and loss (`loss()`, run under whatever autocast the caller set) of `model` on
    one process per recomputation mode in `modes` (those the model has), as `Footprint` at
    micro_batch 1: scale it with `.scaled(...)` after setting its micro_batch.  Tensors are
    counted once per storage (views share) and per `Saved.where` (the same storage saved as a
    column-wise input and on the stream becomes two tensors under sp), the weights excepted."""
    from contextlib import nullcontext

    import torch
    from torch.overrides import TorchFunctionMode

    from ..models import blocks
    from ..models.recompute import attention_recomputed, blocks_recomputed

    kinds = dict(model.tensor_parallel_plan(1, False)) if hasattr(model, "tensor_parallel_plan") else {}
    units = blocks(model)
    modules = dict(model.named_modules())
    unit_paths = {id(u): i for i, u in enumerate(units)}
    block_of = {}
    for path in modules:
        block_of[path] = next((unit_paths[id(modules[a])] for a in _ancestors(path)
                               if a in modules and id(modules[a]) in unit_paths), -1)
    place = {path: _placement(path, kinds, block_of) for path in modules}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    by_size: dict[int, list] = {}
    for p in model.parameters():
        by_size.setdefault(p.numel(), []).append(p)

    def weight_copy(t, storage) -> bool:
        """autocast's low-precision copy of a weight: the ZeRO accounting's 2-byte weights, not
        an activation (and not linear in the batch)."""
        numel = storage.nbytes() // t.element_size()
        return any(p.dtype != t.dtype and torch.equal(
            torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, 0, p.shape), p.detach().to(t.dtype))
            for p in by_size.get(numel, ()))
    stack: list[str] = []
    tokens: list[tuple] = []        # (batch, tokens) of each block being run: the first two sizes of its input
    region_args: dict[str, object] = {}
    io: dict[str, list] = {}
    flops: dict[tuple, float] = {}
    seen: dict[tuple, Saved] = {}
    copies: set[int] = set()
    alive: list = []

    def enter(path):
        def hook(module, args, kwargs):
            stack.append(path)
            first = args[0] if args else next(iter(kwargs.values()), None)
            if id(module) in unit_paths:
                shaped = isinstance(first, torch.Tensor) and first.dim() >= 2
                tokens.append(tuple(first.shape[:2]) if shaped else (-1, -1))
            kind = kinds.get(path)
            if kind in ("region", "region_whole"):
                region_args[path] = first
            if kind is not None and kind not in ("heads", "tokens"):
                region = next((a for a in _ancestors(path)[1:] if kinds.get(a) in ("region", "region_whole")), None)
                once = kind in ("sequence_start", "sequence_end")   # the model's ends, not one per block
                io[path] = [kind, -1 if once else block_of[path], _nbytes(first), 0,
                            region is not None and first is region_args.get(region)]
        return hook

    def leave(path):
        def hook(module, args, kwargs, output):
            stack.pop()
            if id(module) in unit_paths:
                tokens.pop()
            if path in io:
                io[path][3] = _nbytes(output)
        return hook

    def pack(t):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return t
        storage = t.untyped_storage()
        if storage.data_ptr() in weights:
            return t
        alive.append(t)   # held until the mode is done: no storage freed and its address reused meanwhile
        path = stack[-1] if stack else ""
        where, block = place.get(path, ("outside", False))[0], block_of.get(path, -1)
        key = (storage.data_ptr(), t.device.type, where)
        if key not in seen and storage.data_ptr() not in copies:
            if t.is_floating_point() and weight_copy(t, storage):
                copies.add(storage.data_ptr())
                return t
            # (B, N, ...) or a linear layer's flattened (B N, ...) view
            on_tokens = bool(tokens) and t.dim() >= 2 and (tuple(t.shape[:2]) == tokens[-1]
                                                           or t.shape[0] == tokens[-1][0] * tokens[-1][1])
            again = any(k[:2] == key[:2] for k in seen)
            seen[key] = Saved(storage.nbytes(), where, on_tokens, block, again)
        return t

    class CountFlops(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = getattr(func, "__name__", "")
            if name in _COUNTED and torch.is_grad_enabled():
                path = stack[-1] if stack else ""
                a = args[0]
                if name == "linear":
                    n = 2 * out.numel() * a.shape[-1]
                elif name.startswith("conv"):
                    w = args[1]
                    n = 2 * out.numel() * w[0].numel()
                elif name == "scaled_dot_product_attention":
                    q, k, v = args[:3]
                    n = 2 * q.numel() * k.shape[-2] + 2 * out.numel() * v.shape[-2]
                else:
                    n = 2 * out.numel() * a.shape[-1]
                key = (block_of.get(path, -1), place.get(path, ("", False))[1], name == "scaled_dot_product_attention")
                flops[key] = flops.get(key, 0.0) + n
            return out

    hooks = [m.register_forward_pre_hook(enter(path), with_kwargs=True) for path, m in modules.items()]
    hooks += [m.register_forward_hook(leave(path), with_kwargs=True) for path, m in modules.items()]
    attention = [m for m in model.modules() if hasattr(m, "recompute_scores")]
    recomputed = {"selective": attention_recomputed, "full": blocks_recomputed}
    saved: dict[str, list[Saved]] = {}
    out_io, out_flops = [], []
    try:
        for mode in modes:
            if (mode == "selective" and not attention) or (mode == "full" and not units):
                continue
            seen.clear()
            alive.clear()
            copies.clear()
            with recomputed[mode](model) if mode in recomputed else nullcontext():  # undone afterwards
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    with CountFlops() if mode == "none" else nullcontext():
                        value = loss()
                del value
            saved[mode] = list(seen.values())
            if mode == "none":
                out_io = [PlanIO(p, k, b, i, o, r) for p, (k, b, i, o, r) in io.items()]
                out_flops = [Flops(n, b, s, c) for (b, s, c), n in flops.items()]
    finally:
        for h in hooks:
            h.remove()
        alive.clear()
    return Footprint(1, saved, out_io, out_flops, len(units))


def run_footprint(run, micro_batch: int, modes: tuple[str, ...] = RECOMPUTE) -> Footprint:
    """`trace` of a run's model and loss (its family's, under its autocast) at `micro_batch`
    (measured at up to the training set's size, scaled linearly beyond)."""
    import torch

    data, labels = run.training_data()
    n = min(micro_batch, len(data))
    idx = torch.arange(n, device=data.device)
    batch = Batch(data[idx], labels[idx] if labels is not None else None, idx)
    draw = run.family.draw(n, run.noise_rng)

    def loss():
        with run.autocast():
            return run.family.loss(run.forward, batch, draw, run.step).loss
    fp = trace(run.model, loss, modes)
    fp.micro_batch = n
    fp.dtype = str(run.dtype or torch.float32).removeprefix("torch.")
    return fp.scaled(micro_batch)


def recompute_mode(cfg) -> str:
    """The config's activation recomputation as one of `layouts.RECOMPUTE`."""
    return "full" if cfg.recompute else "selective" if cfg.recompute_attention else "none"


def measure(cfg, micro_batch: int, time_step: bool = True, repeats: int = 3,
            modes: tuple[str, ...] | None = None) -> dict:
    """Parameters, FSDP2 units, activation bytes at `micro_batch` (with the config's
    recomputation), the `Footprint` behind them (measured with tp = 1, for any layout) and
    (time_step) the mean wall time of one optimizer step of micro_batch x grad_accum
    examples on this machine, without recomputation (`compute_seconds` adds its FLOPs)."""
    import dataclasses
    import time

    import torch

    from ..models import blocks

    mode = recompute_mode(cfg)
    plain = dataclasses.replace(cfg, batch_size=micro_batch * cfg.grad_accum, recompute=False,
                                recompute_attention=False, tp=1, sp=False)
    run = Trainer(plain, distributed=False)
    fp = run_footprint(run, micro_batch, modes or tuple(dict.fromkeys(("none", mode))))
    forward, again = fp.forward_flops(1, mode)
    out = {"params": sum(p.numel() for p in run.model.parameters()), "units": len(blocks(run.model)) + 1,
           "micro_batch": micro_batch, "device": str(run.device), "recompute": mode,
           "activation_bytes": fp.activations(1, False, mode), "forward_flops": forward, "step_seconds": None,
           "compute_seconds": None, "footprint": fp, "model": run.model}
    if time_step:
        data, labels = run.training_data()
        run.model.train()
        run.train_step(data, labels)  # warm-up
        sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            run.train_step(data, labels, read=run.device.type != "cuda")  # the loop's unread steps on a GPU
        sync()
        run.check()
        out["step_seconds"] = (time.perf_counter() - start) / repeats
        # recomputation repeats `again` FLOPs of the 3 forwards' worth a step costs
        out["compute_seconds"] = out["step_seconds"] * (1 + again / (3 * forward)) if forward else out["step_seconds"]
    return out


def network_footprint(kind: str, config: dict, micro_batch: int = 1, precision: str = "mixed",
                      measure_depth: int | None = None):
    """(Footprint at `micro_batch`, the full network on the meta device) of a transformer with a
    tensor-parallel plan built from its config alone (no data set: x, t, labels drawn at
    random, a mean-square loss): measured at the smallest depth the config accepts among 2 and
    3 (one block of each kind: U-ViT's in / mid and out blocks), or at `measure_depth`, and
    deepened block by block.  precision "mixed": under CPU autocast to bf16, as a GPU run
    saves its activations."""
    import dataclasses

    import torch

    from ..distributed.tensor_parallel import models_with_plan
    from ..models import MODELS, blocks, model_config

    image_networks = [k for k in models_with_plan() if k in ("dit", "uvit")]  # model(x, t, y) on images
    if kind not in image_networks:
        raise ValueError(f"--network {kind!r}: the planner builds networks with a tensor-parallel plan: "
                         f"{image_networks}; plan other models through a preset")
    full = model_config(kind, config)
    for name in ("context_dim", "micro_conditions", "word_vocab"):
        if getattr(full, name, None):
            raise ValueError(f"--network plans class-conditional or unconditional networks; {name} needs its "
                             "inputs: plan a text preset instead")
    small = full
    for depth in (measure_depth,) if measure_depth else (2, 3):
        if depth <= full.depth:
            try:
                small = dataclasses.replace(full, depth=depth)
                break
            except ValueError:
                continue
    network = MODELS[kind][0]
    with torch.device("meta"):
        whole = network(full)
    torch.manual_seed(0)
    model = network(small)
    b, side = micro_batch, small.image_size
    x, t = torch.randn(b, small.in_channels, side, side), torch.rand(b) * 999
    y = torch.randint(small.num_classes, (b,)) if small.num_classes else None
    target = torch.randn(b, small.output_channels, side, side)

    def loss():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "mixed"):
            out = model(x, t, y)
        return (out.float() - target).square().mean()
    fp = trace(model, loss)
    fp.micro_batch, fp.dtype = b, "bfloat16" if precision == "mixed" else "float32"

    def signature(unit):
        return type(unit).__name__, tuple((n, tuple(p.shape)) for n, p in unit.named_parameters())
    measured = [signature(u) for u in blocks(model)]
    return fp.deepened([measured.index(signature(u)) for u in blocks(whole)]), whole


def measure_peak_memory(cfg, micro_batch: int) -> dict:
    """`hirune plan --measure` (CUDA only): one process trains two optimizer steps of the
    per-GPU micro-batch and reports torch.cuda.max_memory_allocated beside the planner's
    one-GPU estimate of what hirune keeps there: float32 weights, gradients and AdamW
    state (4 + 4 + 8 bytes a parameter), the float32 EMA (4), the bf16 copies autocast
    makes of the weights (2, under bf16) and the measured activations."""
    import dataclasses

    import torch

    if not torch.cuda.is_available():
        raise ValueError("--measure compares against torch.cuda.max_memory_allocated and needs a CUDA GPU; "
                         "none is visible here")
    cfg = dataclasses.replace(cfg, batch_size=micro_batch * cfg.grad_accum, device="cuda")
    m = {k: v for k, v in measure(cfg, micro_batch, time_step=False).items() if k not in ("footprint", "model")}
    run = Trainer(cfg, distributed=False)
    data, labels = run.training_data()
    run.model.train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the first step creates AdamW's state
        run.train_step(data, labels)
    torch.cuda.synchronize()
    # the training set sits on the GPU too; the planner does not count it
    dataset = sum(t.numel() * t.element_size() for t in (data, labels) if t is not None and t.is_cuda)
    peak = torch.cuda.max_memory_allocated() - dataset
    mem = memory_per_gpu(m["params"], "ddp", 1, "fp32", m["activation_bytes"])
    autocast_copies = 2 * m["params"] if run.dtype is not None else 0
    estimate = mem.total + autocast_copies
    return {"measured_bytes": peak, "estimated_bytes": estimate, "ratio": estimate / peak,
            "within_15_percent": abs(estimate / peak - 1) <= 0.15, **m}
