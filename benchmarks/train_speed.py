"""Training speed: hirune's ~1.6 M-parameter UNet vs diffusers' UNet2DModel, side by side.

One training step = forward + MSE loss + backward + AdamW step, on a batch of 1 x 28 x 28
images (MNIST-sized) with random times in 0..999.  hirune's model is `UNET_SIZES["tiny"]`;
the peer is diffusers' UNet2DModel(block_out_channels=(32, 64, 64), layers_per_block=2,
attention in the lowest level), the same architecture and 1,623,169 parameters each
(attention: one head of 64 channels in hirune, as in ADM; 8 heads of 8 in diffusers).
diffusers handles 28 x 28 directly (3 levels = 2 downsamplings: 28 -> 14 -> 7), so no
padding is needed.  The two models take turns step by step, so that load on a shared
machine hits both alike, and each one's rate is its batch over its median step time;
warm-up steps are excluded.

CPU: float32, default thread count (printed).  CUDA: bf16 autocast, channels_last,
fused AdamW.

    python benchmarks/train_speed.py [--device cuda] [--batch 64] [--warmup 3] [--steps 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hirune.models import build_model


def hirune_unet() -> torch.nn.Module:
    return build_model("unet", size="tiny", in_channels=1)


def diffusers_unet() -> torch.nn.Module | None:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    net = UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
        layers_per_block=2, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    return _SampleOutput(net)


class _SampleOutput(torch.nn.Module):
    """diffusers returns an output object; the loss wants the tensor."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, t):
        return self.net(x, t).sample


class Trainer:
    """One model, its optimizer and a fixed batch; `steps(n)` runs n training steps."""

    def __init__(self, model: torch.nn.Module, device: str, batch: int):
        cuda = device == "cuda"
        fmt = torch.channels_last if cuda else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=cuda or None)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 1, 28, 28, generator=g).to(device, memory_format=fmt)
        self.t = torch.randint(0, 1000, (batch,), generator=g).float().to(device)
        self.target = torch.randn(batch, 1, 28, 28, generator=g).to(device, memory_format=fmt)
        self.device, self.cuda = device, cuda

    def step(self) -> float:
        """One training step; its wall time in seconds (synchronised on CUDA)."""
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.cuda):
            out = self.model(self.x, self.t)
        loss = F.mse_loss(out.float(), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per model")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    print(f"device {args.device}" + (f" ({torch.cuda.get_device_name()})" if cuda else "")
          + f", torch {torch.__version__}, {torch.get_num_threads()} threads, "
          + f"batch {args.batch} x 1 x 28 x 28, "
          + ("bf16 autocast, channels_last, fused AdamW" if cuda else "float32"))

    torch.manual_seed(0)
    models = {"hirune UNet (tiny)": hirune_unet()}
    peer = diffusers_unet()
    if peer is None:
        print("diffusers not installed: peer skipped")
    else:
        models["diffusers UNet2DModel"] = peer
    trainers = {name: Trainer(m, args.device, args.batch) for name, m in models.items()}
    for tr in trainers.values():
        for _ in range(args.warmup):
            tr.step()
    times = {name: [] for name in trainers}
    for _ in range(args.steps):
        for name, tr in trainers.items():
            times[name].append(tr.step())

    rates = {}
    for name, ts in times.items():
        n_params = sum(p.numel() for p in trainers[name].model.parameters())
        rates[name] = args.batch / statistics.median(ts)
        print(f"{name:24s} {n_params:>10,} params  {rates[name]:8.1f} images/s "
              f"(median step {1e3 * statistics.median(ts):.1f} ms, min {1e3 * min(ts):.1f}, "
              f"max {1e3 * max(ts):.1f}, {args.steps} steps)")
    if len(rates) == 2:
        (a, ra), (b, rb) = rates.items()
        print(f"ratio {a} / {b}: {ra / rb:.2f}")


if __name__ == "__main__":
    main()
