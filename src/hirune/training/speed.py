"""Training speed: `hirune bench train [PRESET] [key=value ...]`.

Times hirune's whole optimizer step for a preset's model (`Trainer.train_step`: the preset's
objective, backward, gradient clipping, AdamW at the scheduled rate, the EMA update) and,
when diffusers is installed and the network is a UNet it can express, the same work done
with diffusers' parts: `UNet2DModel` built to the identical architecture (same widths,
blocks, attention levels and head width, so the same parameter count),
`DDPMScheduler.add_noise`, epsilon MSE, clipping, AdamW and `EMAModel.step`.  The two
take turns step by step, so load on a shared machine hits both alike; each rate is
batch / median step time, warm-up steps excluded.

CPU: float32 at torch's default thread count, fused AdamW for both.  CUDA: the trainer's own bf16 autocast,
fused AdamW and channels-last layout for both.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F


def diffusers_twin(config, sample_size: int) -> torch.nn.Module | None:
    """diffusers' UNet2DModel with the architecture of a hirune `UNetConfig`, or None
    where diffusers is missing or cannot express it (BigGAN resampling).  The parameter
    count is the same, except that with scale-shift conditioning diffusers' middle
    attention has no GroupNorm (2 x its channels fewer)."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    if config.resblock_updown:
        return None
    levels = len(config.channel_mult)
    attention = [2 ** i in config.attention_resolutions for i in range(levels)]
    return UNet2DModel(
        sample_size=sample_size, in_channels=config.in_channels, out_channels=config.output_channels,
        block_out_channels=tuple(config.channels * m for m in config.channel_mult),
        layers_per_block=config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=config.head_channels, dropout=config.dropout,
        resnet_time_scale_shift="scale_shift" if config.use_scale_shift_norm else "default",
        num_class_embeds=config.num_classes + 1 if config.num_classes else None)


class DiffusersStep:
    """The peer's training step over the same data, batch and device."""

    def __init__(self, net: torch.nn.Module, run, batch: int, compiled: bool = False):
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        cuda = run.device.type == "cuda"
        self.fmt = torch.channels_last if cuda else torch.contiguous_format
        self.net = net.to(run.device, memory_format=self.fmt).train()
        self.forward = torch.compile(self.net) if compiled else self.net
        self.scheduler = DDPMScheduler(num_train_timesteps=1000)
        self.opt = torch.optim.AdamW(net.parameters(), lr=run.cfg.lr, fused=True)  # as hirune's
        self.ema = EMAModel(net.parameters(), decay=run.cfg.ema_decay)
        self.run, self.batch, self.cuda = run, batch, cuda
        self.g = torch.Generator(device=run.device).manual_seed(1)

    def __call__(self, data: torch.Tensor, labels: torch.Tensor | None) -> None:
        idx = torch.randint(0, len(data), (self.batch,), generator=self.g, device=data.device)
        x0 = data[idx].contiguous(memory_format=self.fmt)
        noise = torch.randn(x0.shape, generator=self.g, device=x0.device)
        t = torch.randint(0, 1000, (self.batch,), generator=self.g, device=x0.device)
        xt = self.scheduler.add_noise(x0, noise, t).contiguous(memory_format=self.fmt)
        y = labels[idx] if labels is not None else None
        with torch.autocast(self.run.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            out = self.forward(xt, t, class_labels=y).sample
        F.mse_loss(out.float()[:, :x0.shape[1]], noise).backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.run.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.net.parameters())


def _timed(fn, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


BENCH_PRESET = "vpred-mnist5k"  # the pixel UNet, which diffusers' UNet2DModel can be built to exactly


def bench_train(preset: str | None = None, overrides: dict[str, Any] | None = None, *,
                batch: int | None = None, steps: int = 15, warmup: int = 3, peer: bool = True,
                compile_peer: bool = False) -> dict:
    """images/s of hirune's training step for a preset (with overrides) and, where
    possible, of the diffusers twin (`compile_peer`: under torch.compile, beside hirune's
    `compile=true`); returns a dict of rates, parameter counts and setup."""
    from .presets import preset_config
    from .trainer import Trainer

    overrides = dict(overrides or {})
    if batch is not None:
        overrides["batch_size"] = batch
    preset = preset or BENCH_PRESET
    cfg = preset_config(preset, {"out": "bench_out/unused", **overrides})
    run = Trainer(cfg)
    data, labels = run.training_data()
    run.model.train()
    sync = run.device.type == "cuda"
    contestants = {"hirune": lambda: run.train_step(data, labels, read=not sync)}  # a GPU: the loop's unread step
    params = {"hirune": sum(p.numel() for p in run.model.parameters())}
    note = None
    if peer and cfg.model == "unet":
        twin = diffusers_twin(run.model.config, run.family.data.shape[-1])
        if twin is None:
            note = "diffusers missing or the UNet not expressible: peer skipped"
        else:
            peer_step = DiffusersStep(twin, run, cfg.batch_size, compiled=compile_peer)
            contestants["diffusers UNet2DModel"] = lambda: peer_step(data, labels)
            params["diffusers UNet2DModel"] = sum(p.numel() for p in twin.parameters())
    elif peer:
        note = "the peer exists for UNet presets only"
    for fn in contestants.values():
        for _ in range(warmup):
            _timed(fn, sync)
    times = {name: [] for name in contestants}
    for _ in range(steps):
        for name, fn in contestants.items():
            times[name].append(_timed(fn, sync))
    run.check()  # the unread steps' non-finite check
    result = {
        "preset": preset, "device": str(run.device) + (f" ({torch.cuda.get_device_name()})" if sync else ""),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": cfg.batch_size,
        "shape": list(run.family.data.shape),
        "precision": "bf16 autocast, channels-last, fused AdamW" if sync else "float32",
        "steps": steps, "model_config": dataclasses.asdict(run.model.config), "note": note,
        "contestants": {name: {"params": params[name], "images_per_s": cfg.batch_size / statistics.median(ts),
                               "median_step_ms": 1e3 * statistics.median(ts), "min_step_ms": 1e3 * min(ts),
                               "max_step_ms": 1e3 * max(ts)} for name, ts in times.items()},
    }
    rates = [c["images_per_s"] for c in result["contestants"].values()]
    if len(rates) == 2:
        result["ratio"] = rates[0] / rates[1]
    return result


def format_result(r: dict) -> str:
    lines = [f"{r['device']}, torch {r['torch']}, {r['threads']} threads, batch {r['batch']} x "
             + " x ".join(map(str, r["shape"])) + f", {r['precision']}, {r['steps']} timed steps"]
    for name, c in r["contestants"].items():
        lines.append(f"  {name:24s} {c['params']:>11,} params {c['images_per_s']:9.1f} images/s "
                     f"(median step {c['median_step_ms']:.1f} ms, min {c['min_step_ms']:.1f}, "
                     f"max {c['max_step_ms']:.1f})")
    if r.get("note"):
        lines.append(f"  {r['note']}")
    if "ratio" in r:
        lines.append(f"  ratio hirune / diffusers: {r['ratio']:.2f}")
    return "\n".join(lines)
