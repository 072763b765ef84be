"""`hirune plan`: per-GPU memory and communication of a training config under each
data-parallel strategy, and under tensor / sequence parallelism on a dp x tp grid, with a
recommended layout for a GPU count and memory (see `hirune.distributed.planner`)."""

from __future__ import annotations

import argparse
import json

from .common import _positive_int

GIB = 2**30
DEFAULT_TFLOPS = 400.0   # achieved bf16 TFLOP/s assumed for --network without --tflops / --step-ms (an H100 at 40%)


def _add_plan(sub) -> None:
    from ..distributed.layouts import RECOMPUTE
    from ..distributed.planner import LINKS, PRECISION_BYTES
    from ..distributed.strategy import STRATEGIES

    p = sub.add_parser("plan", help="memory and communication per GPU under ddp / zero1-3, tp and sp",
                       description="hirune plan [PRESET] [key=value ...] --gpus N: the ZeRO memory "
                                   "accounting per GPU (weights, gradients, optimizer states, EMA, measured "
                                   "activations) and the ring-collective traffic per step for each strategy, "
                                   "with an estimated step time from a measured one-device step.  --tp / --sp / "
                                   "--recompute plan a dp x tp layout collective by collective; --recommend "
                                   "--memory GIB picks the fastest layout that fits.  --network KIND plans a "
                                   "network from its config alone (key=value are then its config's keys), e.g. "
                                   "--network dit size=XL/2 in_channels=4 image_size=32 num_classes=1000 "
                                   "learned_sigma=true.")
    p.add_argument("items", nargs="*", metavar="PRESET | key=value")
    p.add_argument("--gpus", type=_positive_int, default=8, help="GPUs (dp x tp)")
    p.add_argument("--strategy", choices=("all", *STRATEGIES), default="all")
    p.add_argument("--tp", type=_positive_int, default=None, help="tensor-parallel ranks per group (default: the "
                                                                   "config's tp)")
    p.add_argument("--sp", action="store_true", default=None, help="sequence parallelism on top of tp")
    p.add_argument("--recompute", choices=RECOMPUTE, default=None,
                   help="activation recomputation (default: the config's recompute / recompute_attention)")
    p.add_argument("--memory", type=float, default=None, help="GiB per GPU: which layouts fit")
    p.add_argument("--recommend", action="store_true", help="compare every layout (tp among the divisors of "
                                                             "--gpus up to a node, sp, strategy, recomputation) "
                                                             "and recommend one (needs --memory)")
    p.add_argument("--gpus-per-node", type=_positive_int, default=8, help="tp stays inside a node; dp crosses "
                                                                          "nodes on --inter-link beyond it")
    p.add_argument("--network", default=None, metavar="KIND",
                   help="plan the network KIND (dit, uvit) built from key=value config keys, without data")
    p.add_argument("--batch", type=_positive_int, default=256, help="--network: the global batch")
    p.add_argument("--grad-accum", type=_positive_int, default=1, help="--network: micro-batches per step")
    p.add_argument("--precision", choices=tuple(PRECISION_BYTES), default="mixed",
                   help="mixed: the ZeRO paper's 2/2/12 bytes per parameter; fp32: 4/4/8 (what autocast "
                        "training keeps)")
    p.add_argument("--link", choices=tuple(LINKS), default="nvlink", help="bandwidth / latency preset (intra-node)")
    p.add_argument("--inter-link", choices=tuple(LINKS), default="infiniband", help="between nodes")
    p.add_argument("--bandwidth", type=float, default=None, help="GB/s per direction (overrides --link)")
    p.add_argument("--latency", type=float, default=None, help="microseconds per hop (overrides --link)")
    p.add_argument("--step-ms", type=float, default=None,
                   help="one-device step time at the per-GPU batch of dp = --gpus (default: measured here)")
    p.add_argument("--tflops", type=float, default=None,
                   help="compute rate per GPU for the layouts' time (default: the measured step's; --network: "
                        f"{DEFAULT_TFLOPS:g})")
    p.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="communication does not overlap the backward pass")
    p.add_argument("--measure", action="store_true",
                   help="on a CUDA GPU: train two steps and compare torch.cuda.max_memory_allocated with the "
                        "one-GPU estimate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)


def _network_config(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--network takes the network's config as key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def cmd_plan(args: argparse.Namespace) -> int:
    from ..distributed.planner import LINKS, plan
    from ..distributed.strategy import STRATEGIES
    from ..training.measure import measure, measure_peak_memory, network_footprint
    from ..training.presets import parse_preset_args, preset_config

    link = (args.bandwidth or LINKS[args.link][0], args.latency if args.latency is not None else LINKS[args.link][1])
    if args.recommend and args.memory is None:
        raise ValueError("--recommend needs --memory GIB, the memory of one GPU")
    if args.network:
        fp, model = network_footprint(args.network, _network_config(args.items), 2, args.precision)
        tp, sp, recompute = args.tp or 1, bool(args.sp), args.recompute or "none"
        if not args.recommend:
            _check(args, tp, sp, recompute)
        name, batch, accum = f"--network {args.network}", args.batch, args.grad_accum
        spf = 1 / ((args.tflops or DEFAULT_TFLOPS) * 1e12)
        timing = f"{args.tflops or DEFAULT_TFLOPS:g} TFLOP/s per GPU{'' if args.tflops else ' (assumed)'}"
        params = sum(p.numel() for p in model.parameters())
        return _layouts(args, name, fp, model, params, tp, sp, recompute, batch, accum, spf, timing, link)

    from ..distributed.tensor_parallel import check_plan
    from ..training.measure import recompute_mode

    preset, overrides = parse_preset_args(args.items)
    cfg = preset_config(preset, overrides)
    tp, sp = args.tp or cfg.tp, cfg.sp if args.sp is None else args.sp
    recompute = args.recompute or recompute_mode(cfg)
    check_plan(cfg.model, tp, sp)
    layout_mode = tp > 1 or sp or args.recommend or args.recompute is not None or args.tflops is not None
    if layout_mode and not args.recommend:   # before measuring: a bad grid is named at once
        _check(args, tp, sp, recompute)
    if not layout_mode and cfg.batch_size % (cfg.grad_accum * args.gpus):
        raise ValueError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by grad_accum x "
                         f"GPUs = {cfg.grad_accum} x {args.gpus}")
    micro = max(1, cfg.batch_size // (cfg.grad_accum * args.gpus))
    if args.measure:
        if layout_mode:
            raise ValueError("--measure checks the one-GPU estimate; it takes no --tp / --sp / --recommend")
        return _print_measured(measure_peak_memory(cfg, micro), args.json)
    timed = args.step_ms is None and args.tflops is None
    m = measure(cfg, micro, time_step=timed, modes=None if not layout_mode else ("none", "selective", "full"))
    compute = args.step_ms / 1000 if args.step_ms is not None else m["compute_seconds"]
    if layout_mode:
        forward = m["footprint"].forward_flops()[0]
        if args.tflops is not None:
            spf, timing = 1 / (args.tflops * 1e12), f"{args.tflops:g} TFLOP/s per GPU"
        else:
            step = args.step_ms / 1000 if args.step_ms is not None else m["step_seconds"]
            spf = step / (3 * forward * cfg.grad_accum)
            timing = (f"{1 / spf / 1e12:.3g} TFLOP/s from a {step * 1000:.1f} ms step "
                      f"({'given' if args.step_ms is not None else 'measured on ' + m['device']})")
        return _layouts(args, preset or "default preset", m["footprint"], m["model"], m["params"], tp, sp,
                        recompute, cfg.batch_size, cfg.grad_accum, spf, timing, link, m["units"])
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    plans = [plan(m["params"], s, args.gpus, precision=args.precision, activations=m["activation_bytes"],
                  grad_accum=cfg.grad_accum, units=m["units"], compute_seconds=compute, bandwidth_gbs=link[0],
                  latency_us=link[1], overlap=args.overlap) for s in strategies]
    measured = {k: v for k, v in m.items() if k not in ("footprint", "model")}
    if args.json:
        print(json.dumps({"measured": measured, "plans": [p.as_dict() for p in plans]}))
        return 0
    print(f"{preset or 'default preset'}: {m['params'] / 1e6:.2f} M parameters, {args.gpus} GPUs, micro-batch "
          f"{m['micro_batch']} x accumulation {cfg.grad_accum}; activations {m['activation_bytes'] / GIB:.3f} GiB "
          f"(measured on {m['device']}); {args.precision} precision; link {link[0]:g} GB/s, {link[1]:g} us; "
          f"compute {compute * 1000:.1f} ms/step "
          f"({'given' if args.step_ms is not None else 'measured on ' + m['device']})")
    print("| strategy | weights | gradients | optimizer | EMA | activations | total GiB/GPU | traffic MB/step "
          "| comm ms | step ms | scaling efficiency |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in plans:
        mem = p.memory
        print(f"| {p.strategy} | {mem.weights / GIB:.3f} | {mem.gradients / GIB:.3f} | {mem.optimizer / GIB:.3f} | "
              f"{mem.ema / GIB:.3f} | {mem.activations / GIB:.3f} | {mem.total / GIB:.3f} | "
              f"{p.comm_bytes / 1e6:.1f} | {p.comm_seconds * 1000:.2f} | {p.step_seconds * 1000:.1f} | "
              f"{p.efficiency:.0%} |")
    return 0


def _check(args, tp: int, sp: bool, recompute: str) -> None:
    from ..distributed.layouts import Layout, check_layout
    from ..distributed.strategy import FSDP_STRATEGIES

    strategy = args.strategy if args.strategy != "all" else FSDP_STRATEGIES[-1]   # one that composes with tp
    check_layout(Layout(args.gpus, tp, sp, strategy, recompute))


def _layouts(args, name, fp, model, params, tp, sp, recompute, batch, accum, spf, timing, link, units=None) -> int:
    """The layout view: the given (tp, sp, recompute) under each valid strategy, collective by
    collective; with --recommend every layout, the rule and the one recommended."""
    from ..distributed.layouts import RECOMMEND_RULE, Layout, check_layout, plan_layout, recommend
    from ..distributed.planner import LINKS
    from ..distributed.strategy import STRATEGIES

    options = dict(global_batch=batch, grad_accum=accum, precision=args.precision, seconds_per_flop=spf,
                   intra=link, inter=LINKS[args.inter_link], gpus_per_node=args.gpus_per_node,
                   units=units or fp.depth + 1, overlap=args.overlap)
    memory = args.memory * GIB if args.memory is not None else None
    head = (f"{name}: {params / 1e6:.1f} M parameters, {fp.depth} blocks, global batch {batch} x accumulation "
            f"{accum}, {args.gpus} GPUs ({args.gpus_per_node} a node); activations measured in {fp.dtype} on one "
            f"process at micro-batch {fp.micro_batch} and scaled; {args.precision} precision; compute {timing}; "
            f"links: tp {link[0]:g} GB/s, dp "
            f"{'across nodes ' + args.inter_link if args.gpus > args.gpus_per_node else 'in the node'}")
    if args.recommend:
        best, plans = recommend(fp, model, args.gpus, memory, **options)
        if args.json:
            print(json.dumps({"rule": RECOMMEND_RULE, "recommended": best.as_dict() if best else None,
                              "plans": [p.as_dict() for p in plans]}))
            return 0
        print(head)
        print(f"recommended: {best.layout.name() if best else 'nothing fits in ' + str(args.memory) + ' GiB'} -- "
              f"rule: {RECOMMEND_RULE}")
        _table(plans, memory)
        if best:
            _collectives(best)
        return 0
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    chosen = []
    for s in strategies:
        candidate = Layout(args.gpus, tp, sp, s, recompute)
        if args.strategy == "all":
            try:
                check_layout(candidate)
            except ValueError:   # ddp / zero1 over several tp groups: not composed; the others are shown
                continue
        chosen.append(plan_layout(fp, model, candidate, **options))
    if args.json:
        print(json.dumps({"plans": [p.as_dict() for p in chosen]}))
        return 0
    print(head)
    _table(chosen, memory)
    for p in chosen:
        _collectives(p)
    return 0


def _table(plans, memory) -> None:
    fits = memory is not None
    print("| layout | micro-batch | weights | gradients | optimizer | EMA | activations | total GiB/GPU "
          f"|{' fits |' if fits else ''} comm MB/GPU/step | compute ms | step ms | scaling efficiency |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if fits else "") + "---|---|---|---|")
    for p in plans:
        m = p.memory
        traffic = sum(mb for _, _, mb, _ in p.collectives)
        print(f"| {p.layout.name()} | {p.micro_batch} | {m.weights / GIB:.2f} | {m.gradients / GIB:.2f} | "
              f"{m.optimizer / GIB:.2f} | {m.ema / GIB:.2f} | {m.activations / GIB:.2f} | {m.total / GIB:.2f} |"
              f"{(' yes |' if p.fits(memory) else ' no |') if fits else ''} {traffic:.0f} | "
              f"{p.compute_seconds * 1000:.0f} | {p.step_seconds * 1000:.0f} | {p.efficiency:.0%} |")


def _collectives(p) -> None:
    print(f"\n{p.layout.name()}: collectives per optimizer step")
    print("| group | collective | what | count | size MB | MB/GPU/step | ms | hidden in backward |")
    print("|---|---|---|---|---|---|---|---|")
    for c, n, mb, t in p.collectives:
        print(f"| {c.group} ({n}) | {c.kind} | {c.what} | {c.pieces * c.repeats} | {c.bytes / 1e6 / c.pieces:.2f} "
              f"each | {mb:.1f} | {t * 1000:.2f} | {'yes' if c.overlappable else 'no'} |")


def _print_measured(m: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(m))
    else:
        print(f"one GPU, micro-batch {m['micro_batch']}: measured peak {m['measured_bytes'] / GIB:.3f} GiB "
              f"(torch.cuda.max_memory_allocated, dataset excluded), estimated {m['estimated_bytes'] / GIB:.3f} GiB: "
              f"ratio {m['ratio']:.2f} ({'within' if m['within_15_percent'] else 'outside'} 15%)")
    return 0
