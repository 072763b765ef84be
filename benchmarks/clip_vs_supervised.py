"""CLIP's zero-shot accuracy beside supervised training of the same image tower.

    python benchmarks/clip_vs_supervised.py [--clip-run runs/clip-mnist5k] [--steps 500]

The supervised contestant is CLIP's image tower (`models.clip.ImageTower`, the preset's
width and a 10-way output in place of the embedding) trained by cross-entropy on the labels
with the clip-mnist5k preset's optimisation exactly: AdamW at lr 1e-3 with 50 warm-up
steps and cosine decay to 0.1, batch 128, the same data order (`micro_batch_indices`),
gradient clipping at 1, EMA 0.99 (the weights scored).  Its test accuracy on the 500
MNIST 5k test digits is printed beside the CLIP run's evaluation (if given), with the
parameter counts and the seconds (wall and CPU) each took here.  Run it alone on the
machine (see docs/ARCHITECTURE.md, "Tests").
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from hirune.data import load_dataset
from hirune.models.clip import CLIPConfig, ImageTower
from hirune.training.ema import EMA
from hirune.training.presets import preset_config
from hirune.training.trainer import lr_at, micro_batch_indices


def supervised(steps: int, dataset: str = "mnist5k") -> dict:
    cfg = preset_config(f"clip-{dataset}", {"steps": steps})
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    torch.manual_seed(cfg.seed)
    net = ImageTower(CLIPConfig(image_size=train.data.shape[-1], embed_dim=10, **cfg.model_config))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(net, cfg.ema_decay)
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        idx = micro_batch_indices(len(train.data), cfg.batch_size, step, cfg.seed)
        loss = F.cross_entropy(net(train.data[idx]), train.labels[idx].long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(net)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    net.eval()
    with torch.no_grad(), ema.applied(net):
        accuracy = float((net(test.data).argmax(1) == test.labels).double().mean())
    return {"supervised_test_accuracy": accuracy, "parameters": sum(p.numel() for p in net.parameters()),
            "steps": steps, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clip-run", default=None, help="a trained clip run to evaluate beside it")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--dataset", default="mnist5k", choices=("digits", "mnist5k"))
    args = p.parse_args()
    out = {"supervised_image_tower": supervised(args.steps, args.dataset)}
    if args.clip_run:
        from hirune.training import load

        run = load(args.clip_run)
        out["clip"] = {"parameters": sum(p.numel() for p in run.model.parameters()),
                       "image_tower_parameters": sum(p.numel() for p in run.model.image.parameters()),
                       **run.evaluate()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
