"""`hirune plan`: per-GPU memory and communication of a training config under each
data-parallel strategy (see `hirune.distributed.plan`)."""

from __future__ import annotations

import argparse
import json

from .common import _positive_int


def _add_plan(sub) -> None:
    from ..distributed.planner import LINKS, PRECISION_BYTES
    from ..distributed.strategy import STRATEGIES

    p = sub.add_parser("plan", help="memory and communication per GPU of a config under ddp / zero1-3",
                       description="hirune plan [PRESET] [key=value ...] --gpus N: the ZeRO memory "
                                   "accounting per GPU (weights, gradients, optimizer states, EMA, measured "
                                   "activations) and the ring-collective traffic per step for each strategy, "
                                   "with an estimated step time from a measured one-device step.")
    p.add_argument("items", nargs="*", metavar="PRESET | key=value")
    p.add_argument("--gpus", type=_positive_int, default=8, help="data-parallel world size")
    p.add_argument("--strategy", choices=("all", *STRATEGIES), default="all")
    p.add_argument("--precision", choices=tuple(PRECISION_BYTES), default="mixed",
                   help="mixed: the ZeRO paper's 2/2/12 bytes per parameter; fp32: 4/4/8 (what autocast "
                        "training keeps)")
    p.add_argument("--link", choices=tuple(LINKS), default="nvlink", help="bandwidth / latency preset")
    p.add_argument("--bandwidth", type=float, default=None, help="GB/s per direction (overrides --link)")
    p.add_argument("--latency", type=float, default=None, help="microseconds per hop (overrides --link)")
    p.add_argument("--step-ms", type=float, default=None,
                   help="one-device step time at the per-GPU batch (default: measured here)")
    p.add_argument("--no-overlap", dest="overlap", action="store_false",
                   help="communication does not overlap the backward pass")
    p.add_argument("--measure", action="store_true",
                   help="on a CUDA GPU: train two steps and compare torch.cuda.max_memory_allocated with the "
                        "one-GPU estimate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..distributed.planner import LINKS, plan
    from ..training.measure import measure, measure_peak_memory
    from ..distributed.strategy import STRATEGIES
    from ..training.presets import parse_preset_args, preset_config

    preset, overrides = parse_preset_args(args.items)
    cfg = preset_config(preset, overrides)
    if cfg.batch_size % (cfg.grad_accum * args.gpus):
        raise ValueError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by grad_accum x "
                         f"GPUs = {cfg.grad_accum} x {args.gpus}")
    micro = cfg.batch_size // (cfg.grad_accum * args.gpus)
    if args.measure:
        return _print_measured(measure_peak_memory(cfg, micro), args.json)
    m = measure(cfg, micro, time_step=args.step_ms is None)
    bw, lat = LINKS[args.link]
    bw = args.bandwidth or bw
    lat = args.latency if args.latency is not None else lat
    compute = args.step_ms / 1000 if args.step_ms is not None else m["step_seconds"]
    strategies = STRATEGIES if args.strategy == "all" else (args.strategy,)
    plans = [plan(m["params"], s, args.gpus, precision=args.precision, activations=m["activation_bytes"],
                  grad_accum=cfg.grad_accum, units=m["units"], compute_seconds=compute, bandwidth_gbs=bw,
                  latency_us=lat, overlap=args.overlap) for s in strategies]
    if args.json:
        print(json.dumps({"measured": m, "plans": [p.as_dict() for p in plans]}))
        return 0
    gib = 2**30
    print(f"{preset or 'default preset'}: {m['params'] / 1e6:.2f} M parameters, {args.gpus} GPUs, micro-batch "
          f"{m['micro_batch']} x accumulation {cfg.grad_accum}; activations {m['activation_bytes'] / gib:.3f} GiB "
          f"(measured on {m['device']}); {args.precision} precision; link {bw:g} GB/s, {lat:g} us; "
          f"compute {compute * 1000:.1f} ms/step ({'given' if args.step_ms is not None else 'measured on ' + m['device']})")
    print("| strategy | weights | gradients | optimizer | EMA | activations | total GiB/GPU | traffic MB/step "
          "| comm ms | step ms | scaling efficiency |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in plans:
        mem = p.memory
        print(f"| {p.strategy} | {mem.weights / gib:.3f} | {mem.gradients / gib:.3f} | {mem.optimizer / gib:.3f} | "
              f"{mem.ema / gib:.3f} | {mem.activations / gib:.3f} | {mem.total / gib:.3f} | "
              f"{p.comm_bytes / 1e6:.1f} | {p.comm_seconds * 1000:.2f} | {p.step_seconds * 1000:.1f} | "
              f"{p.efficiency:.0%} |")
    return 0


def _print_measured(m: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(m))
    else:
        gib = 2**30
        print(f"one GPU, micro-batch {m['micro_batch']}: measured peak {m['measured_bytes'] / gib:.3f} GiB "
              f"(torch.cuda.max_memory_allocated, dataset excluded), estimated {m['estimated_bytes'] / gib:.3f} GiB: "
              f"ratio {m['ratio']:.2f} ({'within' if m['within_15_percent'] else 'outside'} 15%)")
    return 0
