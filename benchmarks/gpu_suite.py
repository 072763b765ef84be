"""Issue 23's table in one short device session: hirune beside diffusers, eager and compiled,
in one process, with the ratios and MFU printed and every figure written to JSON.

    python benchmarks/gpu_suite.py                       # a GPU: every row, about 8 minutes on an H100
    python benchmarks/gpu_suite.py --rows dit unet       # some rows (a second call can take the rest)
    python benchmarks/gpu_suite.py --tiny                # a CPU: every row at toy sizes (tests/benchmarks)

Rows
  peak        the card: its data-sheet dense bf16 peak, and a measured 8192^3 bf16 matmul
              (TFLOP/s), the two denominators of MFU (on a CPU: a float32 matmul, no data sheet).
  dit         DiT-B/2 and DiT-S/2 on 32 x 32 x 4 latents, batch 256, one training step (bf16
              autocast, fused AdamW), hirune's DiT against diffusers' DiTTransformer2DModel with
              hirune's weights, eager and torch.compile: `benchmarks/dit_speed.py`'s `bench_size`
              (its docstring says what is timed and how FLOPs are counted).
  unet        the DDPM-CIFAR UNet (128 channels, mults 1 2 2 2, 2 blocks a level, attention at
              16 x 16; 35.7 M parameters) on 32 x 32 x 3 images, batch 128: hirune's whole
              optimizer step (`Trainer.train_step`: objective, backward, clipping, AdamW, EMA;
              `compile=true` compiles the network and the loss) against the same step built from
              diffusers' parts on its UNet2DModel twin (`hirune.training.speed.bench_train`),
              eager and compiled, and eager with upsample-then-conv in place of hirune.nn.conv's
              transposed convolution (faster on a CPU; is it on the GPU?).
  ddim        DDIM-50 sampling with that UNet, batch 256: hirune's `sample(..., "ddim")` over the
              network (eager, torch.compile, and compile with mode "reduce-overhead": CUDA graphs)
              against diffusers' UNet2DModel + DDIMScheduler loop (eager, compiled).
  memory      `hirune plan --measure`'s estimate against torch.cuda.max_memory_allocated of two
              real steps (within 15% is the target); CUDA only.
  syncs       no host sync inside an unread training step (`Trainer.train_step(read=False)`) of the
              UNet and of a DiT, nor inside DDIM sampling: a few steps under CUDA's sync debug mode
              ("error": a synchronizing call raises, and the row names where); a CPU runs them unchecked.
  strategies  `hirune train --nproc 1 ddpm-mnist5k` under each strategy (ddp, zero1, zero2, zero3)
              for a few steps: the nccl paths on one GPU (gloo on a CPU; --tiny: ddp on a 2-D toy).

Writes OUT/gpu_suite.json and OUT/gpu_suite.md and prints the tables as it goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dit_speed  # noqa: E402  (a sibling script: the DiT row is its bench_size)

ROWS = ("peak", "dit", "unet", "ddim", "memory", "syncs", "strategies")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")

# The DDPM paper's CIFAR-10 network (Ho et al. 2020, app. B): 35.7 M parameters.
DDPM_CIFAR = {"channels": 128, "channel_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attention_resolutions": [2],
              "head_channels": 256, "dropout": 0.1, "use_scale_shift_norm": False}
TINY_UNET = {"channels": 32, "channel_mult": [1, 1], "num_res_blocks": 1, "attention_resolutions": [2],
             "head_channels": 32, "dropout": 0.1}


def sizes(tiny: bool, gpu: bool) -> SimpleNamespace:
    """What each row runs: the issue's sizes on a GPU, toy sizes with --tiny."""
    if tiny:
        return SimpleNamespace(dit=["T/2"], dit_batch=2, dit_image=8, unet=TINY_UNET, unet_image=16, unet_batch=4,
                               ddim_batch=4, ddim_steps=5, timed=2, warmup=1, matmul=256,
                               modes=["eager"], unet_modes=["eager", PLAIN], strategies=("ddp",), strategy_steps=2,
                               strategy_preset="ddpm-two-moons")
    return SimpleNamespace(dit=["B/2", "S/2"], dit_batch=256, dit_image=32, unet=DDPM_CIFAR, unet_image=32,
                           unet_batch=128, ddim_batch=256, ddim_steps=50, timed=20 if gpu else 3, warmup=3,
                           matmul=8192 if gpu else 2048, modes=["eager", "compile"] if gpu else ["eager"],
                           unet_modes=["eager", PLAIN, "compile"] if gpu else ["eager", PLAIN],
                           strategies=STRATEGIES, strategy_steps=6,
                           strategy_preset="ddpm-mnist5k")


# ---------------------------------------------------------------- rows

def peak_row(s, device: torch.device) -> dict:
    """The data-sheet peak and a measured large matmul's rate (bf16 on a GPU, float32 on a CPU)."""
    gpu = device.type == "cuda"
    dtype = torch.bfloat16 if gpu else torch.float32
    n = s.matmul
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    seconds = statistics.median(dit_speed.timed(lambda: a @ b, device) for _ in range(5))
    sheet, source = dit_speed.peak_tflops(device, "bf16" if gpu else "fp32", None)
    return {"matmul_n": n, "matmul_dtype": str(dtype).removeprefix("torch."),
            "matmul_tflops": 2 * n ** 3 / seconds / 1e12, "datasheet_tflops": sheet, "datasheet_source": source}


def dit_row(s, device: torch.device, peak: dict) -> list[dict]:
    gpu = device.type == "cuda"
    args = SimpleNamespace(batch=s.dit_batch, image_size=s.dit_image, channels=4, num_classes=1000,
                           modes=s.modes, compile_mode=None, dtype="bf16" if gpu else "fp32", steps=s.timed,
                           warmup=s.warmup, no_diffusers=False,
                           peak=peak.get("datasheet_tflops"))
    results = []
    for size in s.dit:
        r = dit_speed.bench_size(size, args, device)
        for row in r["rows"]:
            if "tflops" in row:
                row["mfu_matmul"] = row["tflops"] / peak["matmul_tflops"]
        results.append(r)
    return results


def cifar_like(folder: Path, image: int, n: int = 512) -> Path:
    """Random 8-bit RGB images of the row's size as an .npz dataset (the step's speed does not
    depend on what the pixels show; nothing is downloaded)."""
    path = folder / f"random_{image}.npz"
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, image, image, 3), dtype=np.uint8))
    return path


PLAIN = "eager, plain upsampling"  # hirune's UNet with upsample-then-conv instead of the transposed conv


def unet_row(s, device: torch.device, data: Path, work: Path) -> list[dict]:
    """bench_train per mode; PLAIN measures hirune.nn.conv's transposed-conv upsampling
    (measured on a CPU only) against the plain form it replaced."""
    from unittest import mock

    from hirune.nn.conv import upsample_then_conv
    from hirune.training.speed import bench_train

    out = []
    for mode in s.unet_modes:
        overrides = {"dataset": str(data), "model": "unet", "model_config": dict(s.unet), "device": device.type,
                     "compile": mode == "compile", "out": str(work / f"unet-{mode}".replace(" ", "_").replace(",", ""))}
        with mock.patch("hirune.models.unet.upsample_conv", upsample_then_conv) if mode == PLAIN \
                else contextlib.nullcontext():
            r = bench_train("vpred-mnist5k", overrides, batch=s.unet_batch, steps=s.timed, warmup=s.warmup,
                            compile_peer=mode == "compile")
        r["mode"] = mode
        out.append(r)
    return out


def _diffusers_ddim(twin, batch: int, steps: int, shape, device: torch.device, compiled: bool):
    from diffusers import DDIMScheduler

    net = torch.compile(twin) if compiled else twin
    scheduler = DDIMScheduler(num_train_timesteps=1000)

    @torch.no_grad()
    def run():
        scheduler.set_timesteps(steps)
        x = torch.randn(batch, *shape, device=device, generator=torch.Generator(device).manual_seed(0))
        for t in scheduler.timesteps:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                eps = net(x, t).sample
            x = scheduler.step(eps.float(), t, x).prev_sample
        return x
    return run


def _hirune_ddim(model, batch: int, steps: int, shape, device: torch.device, mode: str):
    from hirune.process import Denoiser, make_process
    from hirune.sampling import sample

    net = model if mode == "eager" else torch.compile(model, mode="reduce-overhead" if mode == "cuda-graphs"
                                                      else None, dynamic=False)

    def call(x, t, **cond):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return net(x, t, **cond).float()
    denoiser = Denoiser(call, make_process("ddpm"), "eps")

    @torch.no_grad()
    def run():
        return sample(denoiser, (batch, *shape), "ddim", steps=steps, seed=0, device=device).x
    return run


def ddim_row(s, device: torch.device) -> dict:
    from hirune.models import build_model
    from hirune.training.speed import diffusers_twin

    shape = (3, s.unet_image, s.unet_image)
    model = build_model("unet", in_channels=3, **s.unet).to(device).eval()
    contestants = {("hirune", "eager"): _hirune_ddim(model, s.ddim_batch, s.ddim_steps, shape, device, "eager")}
    twin = diffusers_twin(model.config, s.unet_image)
    if twin is not None:
        twin = twin.to(device).eval()
        contestants[("diffusers", "eager")] = _diffusers_ddim(twin, s.ddim_batch, s.ddim_steps, shape, device, False)
    if "compile" in s.modes:
        contestants[("hirune", "compile")] = _hirune_ddim(model, s.ddim_batch, s.ddim_steps, shape, device, "compile")
        if device.type == "cuda":
            contestants[("hirune", "cuda-graphs")] = _hirune_ddim(model, s.ddim_batch, s.ddim_steps, shape, device,
                                                                  "cuda-graphs")
        if twin is not None:
            contestants[("diffusers", "compile")] = _diffusers_ddim(twin, s.ddim_batch, s.ddim_steps, shape, device,
                                                                    True)
    rows = []
    for (name, mode), run in contestants.items():
        t0 = time.perf_counter()
        try:
            run()
            warm = time.perf_counter() - t0
            seconds = statistics.median(dit_speed.timed(run, device) for _ in range(max(1, s.timed // 5)))
        except Exception as e:  # noqa: BLE001 - a failing compile is a result, not a crash
            rows.append({"contestant": name, "mode": mode, "error": dit_speed._error(e)})
            continue
        rows.append({"contestant": name, "mode": mode, "images_per_s": s.ddim_batch / seconds, "seconds": seconds,
                     "warmup_s": warm})
        print(f"  ddim {name} {mode}: {s.ddim_batch / seconds:.1f} images/s", flush=True)
    best_peer = max((r["images_per_s"] for r in rows if r["contestant"] == "diffusers" and "images_per_s" in r),
                    default=None)
    for r in rows:
        if r["contestant"] == "hirune" and best_peer and "images_per_s" in r:
            r["ratio_vs_best_diffusers"] = r["images_per_s"] / best_peer
    torch._dynamo.reset()
    return {"batch": s.ddim_batch, "steps": s.ddim_steps, "shape": list(shape),
            "params": sum(p.numel() for p in model.parameters()), "rows": rows}


def memory_row(device: torch.device, work: Path) -> dict:
    if device.type != "cuda":
        return {"skipped": "torch.cuda.max_memory_allocated needs a CUDA GPU"}
    from hirune.training import preset_config
    from hirune.training.measure import measure_peak_memory

    out = {}
    for preset, micro in (("vpred-mnist5k", 256), ("dit-mnist5k", 256)):
        cfg = preset_config(preset, {"out": str(work / f"memory-{preset}")})
        m = measure_peak_memory(cfg, micro)
        out[preset] = {k: m[k] for k in ("measured_bytes", "estimated_bytes", "ratio", "within_15_percent")}
        print(f"  memory {preset}: estimate / measured {m['ratio']:.3f}", flush=True)
    return out


def _without_sync(fn, device: torch.device, repeats: int = 3) -> dict:
    """`fn` run `repeats` times under CUDA's sync debug mode "error": ok, or the call that synced."""
    if device.type != "cuda":
        for _ in range(repeats):
            fn()
        return {"ok": None, "note": "not checked: CUDA's sync debug mode needs a GPU"}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(repeats):
            fn()
        return {"ok": True}
    except RuntimeError as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if "hirune" in f.filename] or \
            traceback.extract_tb(e.__traceback__)
        where = f"{frames[-1].filename.split('src/')[-1]}:{frames[-1].lineno} {frames[-1].line}"
        return {"ok": False, "error": str(e).splitlines()[0][:200], "where": where}
    finally:
        torch.cuda.set_sync_debug_mode(0)


def syncs_row(s, device: torch.device, data: Path, work: Path) -> dict:
    """Unread training steps of the UNet and a DiT, and DDIM sampling, checked for host syncs."""
    from hirune.training import Trainer, preset_config

    dit = {"in_channels": 3, "image_size": s.unet_image, "patch_size": 2, "hidden_size": 64, "depth": 2,
           "num_heads": 2}
    out = {}
    for name, (model, config) in {"unet train step": ("unet", dict(s.unet)), "dit train step": ("dit", dit)}.items():
        cfg = preset_config("vpred-mnist5k", {"dataset": str(data), "model": "unet", "model_config": {},
                                              "device": device.type, "batch_size": s.unet_batch,
                                              "out": str(work / f"syncs-{model}")})
        cfg = type(cfg).from_dict({**cfg.to_dict(), "model": model, "model_config": config})
        run = Trainer(cfg, distributed=False)
        images, labels = run.training_data()
        run.model.train()
        run.train_step(images, labels)  # the first step builds what is built once, and is read
        out[name] = _without_sync(lambda: run.train_step(images, labels, read=False), device)
        run.check()
    from hirune.models import build_model

    model = build_model("unet", in_channels=3, **s.unet).to(device).eval()
    sampler = _hirune_ddim(model, s.unet_batch, 3, (3, s.unet_image, s.unet_image), device, "eager")
    sampler()
    out["ddim sampling"] = _without_sync(sampler, device, repeats=1)
    for name, r in out.items():
        verdict = {True: "no sync", None: r.get("note"), False: f"SYNC at {r.get('where')}: {r.get('error')}"}
        print(f"  syncs {name}: {verdict[r['ok']]}", flush=True)
    return out


def strategies_row(s, device: torch.device, work: Path) -> dict:
    """`hirune train --nproc 1` under each strategy: the launcher, the process group (nccl on a
    GPU), the wrapped model, the checkpoint; a few steps each."""
    out = {}
    for strategy in s.strategies:
        run = work / f"strategy-{strategy}"
        cmd = [sys.executable, "-m", "hirune", "train", "--nproc", "1", s.strategy_preset,
               f"strategy={strategy}",
               f"steps={s.strategy_steps}", "log_every=1", f"ckpt_every={s.strategy_steps}", "sample_every=0",
               "batch_size=16", "eval_samples=0", "num_samples=4", f"device={device.type}", f"out={run}"]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        ok = p.returncode == 0 and (run / "checkpoints").is_dir()
        tail = (p.stdout + p.stderr).strip().splitlines()[-1:] or [""]
        out[strategy] = {"ok": ok, "seconds": time.perf_counter() - t0, "last_line": tail[0][:200]}
        print(f"  strategy {strategy}: {'ok' if ok else 'FAILED'} ({out[strategy]['seconds']:.0f} s)", flush=True)
    return out


# ---------------------------------------------------------------- report

def report(meta: dict, results: dict) -> str:
    lines = [f"# GPU suite: {meta['device_name']}, torch {meta['torch']}, diffusers {meta['diffusers']}", ""]
    if "peak" in results:
        p = results["peak"]
        lines += [f"Peak: data sheet {p['datasheet_tflops'] or '-'} TFLOP/s ({p['datasheet_source']}); measured "
                  f"{p['matmul_n']}^3 {p['matmul_dtype']} matmul {p['matmul_tflops']:.1f} TFLOP/s", ""]
    if "dit" in results:
        lines += ["| DiT | contestant | mode | images/s | MFU (sheet) | MFU (matmul) | vs diffusers |",
                  "|---|---|---|---|---|---|---|"]
        for r in results["dit"]:
            for row in r["rows"]:
                if "error" in row:
                    lines.append(f"| {r['size']} | {row['contestant']} | {row['mode']} | {row['error']} | | | |")
                    continue
                mfu = f"{100 * row['mfu']:.1f}%" if "mfu" in row else "-"
                lines.append(f"| {r['size']} | {row['contestant']} | {row['mode']} | {row['images_per_s']:.1f} | "
                             f"{mfu} | {100 * row['mfu_matmul']:.1f}% | {row.get('ratio_vs_diffusers', 1):.2f} |")
        lines.append("")
    if "unet" in results:
        lines += ["| UNet train step | mode | hirune images/s | diffusers images/s | ratio | params (hirune) |",
                  "|---|---|---|---|---|---|"]
        for r in results["unet"]:
            c = r["contestants"]
            peer = c.get("diffusers UNet2DModel", {}).get("images_per_s")
            lines.append(f"| batch {r['batch']} | {r['mode']} | {c['hirune']['images_per_s']:.1f} | "
                         f"{peer and f'{peer:.1f}' or '-'} | {r.get('ratio', float('nan')):.2f} | "
                         f"{c['hirune']['params']:,} |")
        lines.append("")
    if "ddim" in results:
        d = results["ddim"]
        lines += [f"| DDIM-{d['steps']}, batch {d['batch']} | mode | images/s | vs best diffusers |",
                  "|---|---|---|---|"]
        for row in d["rows"]:
            if "error" in row:
                lines.append(f"| {row['contestant']} | {row['mode']} | {row['error']} | |")
            else:
                ratio = row.get("ratio_vs_best_diffusers")
                lines.append(f"| {row['contestant']} | {row['mode']} | {row['images_per_s']:.1f} | "
                             f"{'-' if ratio is None else f'{ratio:.2f}'} |")
        lines.append("")
    if "memory" in results:
        m = results["memory"]
        if "skipped" in m:
            lines += [f"Memory: skipped ({m['skipped']})", ""]
        else:
            lines += [f"Memory {k}: estimate {v['estimated_bytes'] / 2**30:.2f} GiB, measured "
                      f"{v['measured_bytes'] / 2**30:.2f} GiB, ratio {v['ratio']:.3f}" for k, v in m.items()] + [""]
    if "syncs" in results:
        verdicts = {True: "no sync", None: "not checked (CPU)", False: "SYNCS"}
        lines += ["Host syncs: " + ", ".join(f"{k} {verdicts[v['ok']]}" + (f" at {v['where']}" if v["ok"] is False
                                                                           else "")
                                             for k, v in results["syncs"].items()), ""]
    if "strategies" in results:
        lines += ["Strategies (one process): " + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'} ({v['seconds']:.0f} s)"
                                                            for k, v in results["strategies"].items()), ""]
    lines.append(f"wall time {meta['wall_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    p.add_argument("--tiny", action="store_true", help="toy sizes (a CPU test of every path)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench_out/gpu_suite")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    s = sizes(args.tiny, gpu)
    try:
        import diffusers
        diffusers_version = diffusers.__version__
    except ImportError:
        diffusers_version = "not installed"
    meta = {"device_name": torch.cuda.get_device_name(device) if gpu else
            f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            "torch": torch.__version__, "diffusers": diffusers_version, "tiny": args.tiny, "rows": args.rows,
            "threads": torch.get_num_threads()}
    print(f"{meta['device_name']}, torch {meta['torch']}, diffusers {diffusers_version}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "peak" in args.rows or "dit" in args.rows:
            results["peak"] = peak_row(s, device)
        if "dit" in args.rows:
            results["dit"] = dit_row(s, device, results["peak"])
        if "unet" in args.rows:
            results["unet"] = unet_row(s, device, cifar_like(work, s.unet_image), work)
        if "ddim" in args.rows:
            results["ddim"] = ddim_row(s, device)
        if "memory" in args.rows:
            results["memory"] = memory_row(device, work)
        if "syncs" in args.rows:
            results["syncs"] = syncs_row(s, device, cifar_like(work, s.unet_image), work)
        if "strategies" in args.rows:
            results["strategies"] = strategies_row(s, device, work)
    meta["wall_s"] = time.perf_counter() - t0
    text = report(meta, results)
    (out / "gpu_suite.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    (out / "gpu_suite.md").write_text(text + "\n")
    print(text)
    print(f"\nwrote {out / 'gpu_suite.md'} and {out / 'gpu_suite.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
