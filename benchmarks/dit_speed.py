"""DiT training speed: hirune's DiT against diffusers' DiTTransformer2DModel of the same size,
measured in the same run: images/s and model FLOPs utilisation (MFU).

What is timed is one whole training step at a fixed batch: forward, MSE on the first
in_channels output channels (the prediction; the rest is the learned variance) against a
random target, backward, AdamW (fused on CUDA, foreach on CPU), zero_grad(set_to_none=True).
Every contestant sees the same random inputs (x, t, y, target).  Warm-up steps, which
include torch.compile's compilation, are excluded; the contestants then take turns step by
step (so load on a shared machine hits all alike) and each rate is batch / median step
time.  CUDA: synchronize, then CUDA events around the step; CPU: perf_counter.

Contestants (per size, each in the modes asked for: eager and/or torch.compile)
  hirune     `build_model("dit", size=..., in_channels=4, image_size=32, num_classes=1000,
             learned_sigma=True)`: separate q, k, v linears, SDPA, tanh GELU.
  diffusers  `DiTTransformer2DModel` with the same hidden size, depth, heads, patch and
             classes, out_channels = 8 (learned sigma), loaded with hirune's weights through
             the mapping of tests/models/test_dit.py and set to compute the same function
             (norm_eps=1e-6, downscale_freq_shift=0); the fp32 outputs are compared once.
             It keeps a copy of the time MLP and the class table in every block, so it has
             (depth - 1) x (256 D + D^2 + 1001 D + 2 D) more parameters (+17.1 M at B/2,
             +6.9 M at S/2) and computes the time embedding depth + 1 times (0.04% more
             FLOPs at B/2 on 256 tokens: not counted).  In train
             mode it also drops 10% of the labels itself.

FLOPs.  Model FLOPs (PaLM's MFU, Chowdhery et al. 2022, app. B): 2 FLOPs per multiply-add
of the matrix products (linears, the patch-embedding convolution, attention's q k^T and
a v); normalisations, activations, softmax, biases and the optimizer are not counted.  A
training step costs 3 x the forward (backward: 2 x).  The forward is counted analytically
from the architecture and checked against torch.utils.flop_counter.FlopCounterMode on one
image (attention through the math backend: FlopCounterMode has no formula for the CPU
flash kernel and would miss q k^T and a v).  DiT's paper (Table 4) counts one multiply-add
as one FLOP: its 23.01 GFLOPs for B/2 at 256 px is half of our 46.0.  MFU = achieved model
FLOP/s / the device's dense bf16 peak; the same model FLOPs are used for both contestants,
so their MFU ratio is their images/s ratio.

    python benchmarks/dit_speed.py                               # GPU: B/2, S/2, batch 256, bf16, eager + compile
    python benchmarks/dit_speed.py --device cpu --threads 2      # CPU: S/2 at 16 x 16 x 4, batch 16, fp32, eager
    python benchmarks/dit_speed.py --sizes B/2 --modes compile --compile-mode max-autotune-no-cudagraphs

GPU defaults: B/2 and S/2 on 32 x 32 x 4 latents, batch 256, bf16 autocast, eager and
compile, 20 timed steps; most of the few minutes it takes is compilation (4 compiled
models).  CPU defaults: S/2 on 16 x 16 x 4 latents (64 tokens: 256 would take 4x longer
than a loaded 2-core CPU allows), batch 16, float32, eager, 5 timed steps: about a
minute on one thread; --modes compile adds about 2.5 minutes of compilation per model.
Results go to OUT/dit_speed.md and OUT/dit_speed.json (one run per OUT: use another
--out to keep an earlier run).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hirune.models import build_model
from hirune.models.dit import FREQUENCY_DIM

# DiT's Table 4: forward Gflops of each size at 256 x 256 px (32 x 32 x 4 latents), one
# multiply-add counted as one FLOP.
PAPER_GFLOPS = {"S/2": 6.06, "B/2": 23.01, "L/2": 80.71, "XL/2": 118.64,
                "S/4": 1.41, "B/4": 5.56, "L/4": 19.70, "XL/4": 29.05,
                "S/8": 0.36, "B/8": 1.42, "L/8": 5.01, "XL/8": 7.39}

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, no sparsity), first match
# of the name reported by torch.cuda.get_device_name wins.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("H800", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0),
                    ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]


# ---------------------------------------------------------------- FLOPs

def dit_forward_flops(config) -> dict[str, float]:
    """Forward model FLOPs per image of a hirune `DiTConfig`, by layer kind (2 per
    multiply-add, matrix products only; see the module docstring).  N tokens of width D."""
    D, p, L = config.hidden_size, config.patch_size, config.depth
    N = (config.image_size // p) ** 2
    hidden = int(D * config.mlp_ratio)
    flops = {
        "patch_embed": 2 * N * (p * p * config.in_channels) * D,
        "time_mlp": 2 * (FREQUENCY_DIM * D + D * D),                 # once per image, not per token
        "adaLN": 2 * (L * D * 6 * D + D * 2 * D),                    # blocks' six vectors, final layer's two
        "qkv": L * 2 * N * D * 3 * D,                                # q, k and v together
        "attention": L * 2 * 2 * N * N * D,                          # q k^T and a v over all heads
        "attn_proj": L * 2 * N * D * D,
        "mlp": L * 2 * 2 * N * D * hidden,
        "final_linear": 2 * N * D * (p * p * config.output_channels),
    }
    flops["total"] = sum(flops.values())
    return {k: float(v) for k, v in flops.items()}


def counted_flops(forward, x, t, y, backward: bool = False) -> float:
    """FLOPs that torch.utils.flop_counter.FlopCounterMode sees in forward(x, t, y) (and
    its backward), attention through the math backend so that it is counted on any device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(backward):
            out = forward(x, t, y)
            if backward:
                out.float().square().mean().backward()
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, dtype_name: str, override: float | None) -> tuple[float | None, str]:
    """(peak TFLOP/s, where it came from); None where unknown (CPU without --peak-tflops)."""
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "CPU: pass --peak-tflops for MFU"
    if dtype_name != "bf16":
        return None, "fp32 on GPU: pass --peak-tflops (TF32 or FP32 peak) for MFU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"dense bf16 peak of {key}"
    return None, f"unknown GPU {name!r}: pass --peak-tflops for MFU"


# ---------------------------------------------------------------- contestants

def hirune_dit(size: str, args) -> torch.nn.Module:
    return build_model("dit", size=size, in_channels=args.channels, image_size=args.image_size,
                       num_classes=args.num_classes, learned_sigma=True)


def diffusers_twin(model) -> tuple[torch.nn.Module | None, str | None]:
    """diffusers' DiTTransformer2DModel computing the function of a hirune DiT (same weights),
    or (None, why) when diffusers is missing."""
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError as e:
        return None, f"diffusers not installed ({e.name}): hirune alone"
    c = model.config
    twin = DiTTransformer2DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.hidden_size // c.num_heads,
        in_channels=c.in_channels, out_channels=c.output_channels, num_layers=c.depth,
        sample_size=c.image_size, patch_size=c.patch_size, num_embeds_ada_norm=c.num_classes,
        norm_eps=1e-6)
    for block in twin.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0      # DiT's sinusoid frequencies
    mapping = weight_mapping()
    if mapping is None:
        return twin, "weight mapping not importable (tests/, pytest): diffusers keeps its own initialisation"
    twin.load_state_dict(mapping(model), strict=True)
    return twin, None


def weight_mapping():
    """tests/models/test_dit.diffusers_state_dict (hirune DiT -> diffusers names), or None."""
    tests = Path(__file__).resolve().parents[1] / "tests"
    for folder in (str(tests), str(tests / "models")):  # test_dit imports tests/networks.py
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        from test_dit import diffusers_state_dict
    except ImportError:
        return None
    return diffusers_state_dict


def same_function_check(model, twin, one: dict) -> float:
    """max |hirune - diffusers| / max |hirune| of one fp32 forward (eval mode: no label dropout) on copies
    whose zero-initialised layers are made random, so that every branch counts."""
    ours, theirs = copy.deepcopy(model).eval(), copy.deepcopy(twin).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
        theirs.load_state_dict(weight_mapping()(ours), strict=True)
        a = ours(one["x"], one["t"], one["y"])
        b = theirs(one["x"], one["t"], class_labels=one["y"]).sample
    return float((a - b).abs().max() / a.abs().max())


def forward_fn(name: str, net):
    """The contestant's call as (x, t, y) -> (B, out, H, W)."""
    if name == "hirune":
        return lambda x, t, y: net(x, t, y)
    return lambda x, t, y: net(x, t, class_labels=y).sample


class TrainStep:
    """One training step of a network on fixed inputs: forward (autocast when dtype is
    bf16), MSE of the first C output channels against the target, backward, AdamW,
    zero_grad(set_to_none=True)."""

    def __init__(self, name: str, net: torch.nn.Module, mode: str, inputs: dict, args):
        self.net = net.train()
        self.device = inputs["x"].device
        cuda = self.device.type == "cuda"
        module = torch.compile(net, mode=args.compile_mode) if mode == "compile" else net
        self.forward = forward_fn(name, module)
        self.opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True if cuda else None,
                                     foreach=None if cuda else True)
        self.inputs, self.autocast = inputs, args.dtype == "bf16"

    def __call__(self) -> None:
        x, t, y, target = (self.inputs[k] for k in ("x", "t", "y", "target"))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            out = self.forward(x, t, y)
        F.mse_loss(out[:, :target.shape[1]].float(), target).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def timed(fn, device: torch.device) -> float:
    """Seconds of one call: CUDA events after a synchronize on a GPU, perf_counter on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def random_inputs(args, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    B, C, S = args.batch, args.channels, args.image_size
    inputs = {"x": torch.randn(B, C, S, S, generator=g), "t": 1000 * torch.rand(B, generator=g),
              "y": torch.randint(0, args.num_classes, (B,), generator=g),
              "target": torch.randn(B, C, S, S, generator=g)}
    return {k: v.to(device) for k, v in inputs.items()}


def _error(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first[:200]}"


# ---------------------------------------------------------------- one size

def bench_size(size: str, args, device: torch.device) -> dict:
    """Build both models at one size, cross-check FLOPs and outputs, time every
    (contestant, mode); returns the size's results."""
    torch.manual_seed(0)
    model = hirune_dit(size, args)
    nets = {"hirune": model}
    twin, note = diffusers_twin(model) if not args.no_diffusers else (None, "--no-diffusers: hirune alone")
    if twin is not None:
        nets["diffusers"] = twin
    analytic = dit_forward_flops(model.config)
    one = {k: v[:1].cpu() for k, v in random_inputs(args, torch.device("cpu")).items()}
    result = {"size": size, "config": {k: getattr(model.config, k) for k in
                                       ("hidden_size", "depth", "num_heads", "patch_size", "image_size",
                                        "in_channels", "output_channels", "num_classes")},
              "tokens": (args.image_size // model.config.patch_size) ** 2, "note": note,
              "flops_forward_analytic": analytic, "params": {}, "flops_forward_counted": {}, "rows": []}
    if twin is not None and note is None:
        result["max_rel_diff_fp32"] = same_function_check(model, twin, one)
    for name, net in nets.items():
        result["params"][name] = sum(p.numel() for p in net.parameters())
        result["flops_forward_counted"][name] = counted_flops(forward_fn(name, net), one["x"], one["t"], one["y"])
    result["flops_train_counted_hirune"] = counted_flops(forward_fn("hirune", model), one["x"], one["t"],
                                                         one["y"], backward=True)
    model.zero_grad(set_to_none=True)
    train_flops = 3 * analytic["total"]
    result["flops_train_model"] = train_flops

    inputs = random_inputs(args, device)
    steps, compile_s = {}, {}
    for mode in args.modes:
        for name, net in nets.items():
            key = (name, mode)
            try:
                step = TrainStep(name, copy.deepcopy(net).to(device), mode, inputs, args)
                t0 = time.perf_counter()
                for _ in range(args.warmup):
                    timed(step, device)
                compile_s[key] = time.perf_counter() - t0
                steps[key] = step
            except Exception as e:  # noqa: BLE001 - a failing compile or OOM is a result, not a crash
                result["rows"].append({"contestant": name, "mode": mode, "error": _error(e)})
                print(f"  {size} {name} {mode}: {_error(e)}", flush=True)
                step = None                                         # free its memory before the next
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            print(f"  {size} {name} {mode}: warm-up {compile_s[key]:.1f} s", flush=True)
    times = {key: [] for key in steps}
    for _ in range(args.steps):
        for key, step in list(steps.items()):
            try:
                times[key].append(timed(step, device))
            except Exception as e:  # noqa: BLE001
                result["rows"].append({"contestant": key[0], "mode": key[1], "error": _error(e)})
                del steps[key], times[key]
    for (name, mode), ts in times.items():
        median = statistics.median(ts)
        rate = args.batch / median
        row = {"contestant": name, "mode": mode, "images_per_s": rate, "median_step_ms": 1e3 * median,
               "min_step_ms": 1e3 * min(ts), "max_step_ms": 1e3 * max(ts), "warmup_s": compile_s[(name, mode)],
               "tflops": rate * train_flops / 1e12}
        if args.peak:
            row["mfu"] = row["tflops"] / args.peak
        result["rows"].append(row)
    rates = {(r["contestant"], r["mode"]): r["images_per_s"] for r in result["rows"] if "images_per_s" in r}
    for row in result["rows"]:
        peer = rates.get(("diffusers", row["mode"]))
        if row["contestant"] == "hirune" and "images_per_s" in row and peer:
            row["ratio_vs_diffusers"] = row["images_per_s"] / peer
    if ("hirune", "compile") in rates and ("diffusers", "compile") in rates:
        result["hirune_compile_vs_diffusers_compile"] = rates[("hirune", "compile")] / rates[("diffusers", "compile")]
    order = {name: i for i, name in enumerate(("hirune", "diffusers"))}
    result["rows"].sort(key=lambda r: (args.modes.index(r["mode"]), order[r["contestant"]]))
    steps = step = None
    torch._dynamo.reset()                                           # let go of the compiled models
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------- report

def flops_table(results: list[dict]) -> str:
    lines = ["| size | tokens | analytic fwd GFLOP/img | FlopCounterMode hirune | FlopCounterMode diffusers "
             "| counted fwd+bwd / fwd | paper (MACs) x 2 at 32x32 |", "|---|---|---|---|---|---|---|"]
    for r in results:
        a = r["flops_forward_analytic"]["total"]
        counted = r["flops_forward_counted"]
        dif = counted.get("diffusers")
        paper = PAPER_GFLOPS.get(r["size"])
        paper_text = "-"
        if paper is not None:
            at32 = dit_forward_flops(_config_at(r, 32))["total"]
            paper_text = f"{2 * paper:.2f} (ours at 32x32: {at32 / 1e9:.2f})"
        lines.append(f"| {r['size']} | {r['tokens']} | {a / 1e9:.3f} | {counted['hirune'] / 1e9:.3f} "
                     f"({counted['hirune'] / a - 1:+.2%}) | "
                     + (f"{dif / 1e9:.3f} ({dif / a - 1:+.2%})" if dif else "-")
                     + f" | {r['flops_train_counted_hirune'] / counted['hirune']:.3f} | {paper_text} |")
    return "\n".join(lines)


def _config_at(r: dict, image_size: int):
    from hirune.models.dit import DiTConfig
    c = r["config"]
    return DiTConfig(in_channels=c["in_channels"], learned_sigma=True, image_size=image_size,
                     patch_size=c["patch_size"], hidden_size=c["hidden_size"], depth=c["depth"],
                     num_heads=c["num_heads"], num_classes=c["num_classes"])


def speed_table(results: list[dict]) -> str:
    lines = ["| size | contestant | mode | params | median step ms | img/s | TFLOP/s | MFU | hirune / diffusers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            params = f"{r['params'][row['contestant']] / 1e6:.1f} M"
            if "error" in row:
                lines.append(f"| {r['size']} | {row['contestant']} | {row['mode']} | {params} | "
                             f"failed: {row['error'].replace('|', '/')} | | | | |")
                continue
            mfu = f"{100 * row['mfu']:.1f}%" if "mfu" in row else "n/a"
            ratio = f"{row['ratio_vs_diffusers']:.2f}x" if "ratio_vs_diffusers" in row else ""
            lines.append(f"| {r['size']} | {row['contestant']} | {row['mode']} | {params} | "
                         f"{row['median_step_ms']:.1f} | {row['images_per_s']:.1f} | {row['tflops']:.2f} | "
                         f"{mfu} | {ratio} |")
    return "\n".join(lines)


def report(meta: dict, results: list[dict]) -> str:
    head = (f"{meta['device_name']}, torch {meta['torch']}, diffusers {meta['diffusers']}, "
            f"{meta['dtype']}, batch {meta['batch']} x {meta['channels']} x {meta['image_size']} x "
            f"{meta['image_size']}, torch.compile mode {meta['compile_mode']}, {meta['steps']} timed steps (median) after {meta['warmup']} warm-up, "
            f"peak {meta['peak_tflops'] or 'n/a'} TFLOP/s ({meta['peak_source']})")
    if meta["device"] == "cpu":
        head += f", {meta['threads']} threads, load average {meta['load_before']:.2f} before the run"
    parts = [head, "", speed_table(results), ""]
    for r in results:
        extra = []
        if "hirune_compile_vs_diffusers_compile" in r:
            extra.append(f"hirune compiled / diffusers compiled: {r['hirune_compile_vs_diffusers_compile']:.2f}x")
        if "max_rel_diff_fp32" in r:
            extra.append(f"same function: max |hirune - diffusers| / max |hirune| of one fp32 forward "
                         f"(random adaLN and output layers) {r['max_rel_diff_fp32']:.1e}")
        if r["note"]:
            extra.append(r["note"])
        if extra:
            parts.append(f"{r['size']}: " + "; ".join(extra))
    parts += ["", "Model FLOPs per image, 2 per multiply-add (training step = 3 x forward):", "",
              flops_table(results)]
    return "\n".join(parts)


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--sizes", nargs="+", default=None, help="named DiT sizes (GPU: B/2 S/2; CPU: S/2)")
    p.add_argument("--batch", type=int, default=None, help="GPU: 256; CPU: 16")
    p.add_argument("--image-size", type=int, default=None, help="latent side; GPU: 32; CPU: 16")
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--modes", nargs="+", choices=("eager", "compile"), default=None,
                   help="GPU: eager compile; CPU: eager")
    p.add_argument("--compile-mode", default=None,
                   choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                   help="torch.compile's mode (default: its default)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="bf16 = autocast bf16 (GPU default); fp32 (CPU default)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per contestant (GPU: 20; CPU: 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: bf16 table on GPU)")
    p.add_argument("--no-diffusers", action="store_true", help="hirune alone")
    p.add_argument("--out", default="bench_out/dit_speed")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    args.sizes = args.sizes or (["B/2", "S/2"] if gpu else ["S/2"])
    args.batch = args.batch or (256 if gpu else 16)
    args.image_size = args.image_size or (32 if gpu else 16)
    args.modes = args.modes or (["eager", "compile"] if gpu else ["eager"])
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    args.steps = args.steps or (20 if gpu else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.peak, peak_source = peak_tflops(device, args.dtype, args.peak_tflops)
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = "not installed"
    meta = {"device": device.type, "device_name": torch.cuda.get_device_name(device) if gpu else
            f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "torch": torch.__version__, "diffusers": diffusers_version, "dtype": args.dtype,
            "batch": args.batch, "channels": args.channels, "image_size": args.image_size,
            "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
            "peak_tflops": args.peak, "peak_source": peak_source, "modes": args.modes,
            "compile_mode": args.compile_mode or "default",
            "load_before": os.getloadavg()[0]}
    print(f"{meta['device_name']}, torch {meta['torch']}, diffusers {diffusers_version}, {args.dtype}, "
          f"batch {args.batch}, {args.image_size}x{args.image_size}x{args.channels}, modes {args.modes}, "
          f"{meta['threads']} threads", flush=True)
    t0 = time.perf_counter()
    results = [bench_size(size, args, device) for size in args.sizes]
    meta["wall_s"] = time.perf_counter() - t0
    text = report(meta, results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dit_speed.md").write_text(text + "\n")
    (out / "dit_speed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(text)
    print(f"\nwrote {out / 'dit_speed.md'} and {out / 'dit_speed.json'} ({meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
