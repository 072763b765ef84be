"""Device check for the trainer: every objective trains a few steps on CUDA (bf16 autocast,
fused AdamW), checkpoints, resumes exactly, samples and evaluates; then the images/s of
the pixel UNet (vpred-mnist5k) at batch 256, and `hirune bench train` (beside diffusers' twin UNet)
at batch 256.

    python benchmarks/gpu_train_check.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from hirune.training import load, preset_config, train


def main(out: Path) -> None:
    print(torch.cuda.get_device_name(), torch.__version__)
    for preset in ("ddpm-two-moons", "vpred-digits", "iddpm-digits", "ncsn-two-moons", "flow-mnist5k"):
        over = {"steps": 20, "log_every": 10, "ckpt_every": 10, "sample_every": 20, "sample_steps": 10,
                "num_samples": 16, "device": "cuda", "out": str(out / preset)}
        a = train(preset_config(preset, over), progress=False)
        b_over = {**over, "out": str(out / (preset + "-b"))}
        train(preset_config(preset, b_over), stop_after=10, progress=False)
        b = train(preset_config(preset, {**b_over, "resume": True}), progress=False)
        same = all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
        loss = json.loads(Path(over["out"], "metrics.jsonl").read_text().splitlines()[-1])["loss"]
        run = load(over["out"])
        print(f"  {preset:16s} loss {loss:.4f}  resume bit-identical: {same}  reloaded step {run.step}")
    cfg = preset_config("ddpm-mnist5k", {"steps": 60, "batch_size": 256, "log_every": 20, "ckpt_every": 0,
                                         "sample_every": 0, "device": "cuda", "out": str(out / "speed")})
    t0 = time.perf_counter()
    train(cfg, progress=False)
    torch.cuda.synchronize()
    rows = [json.loads(line) for line in Path(cfg.out, "metrics.jsonl").read_text().splitlines()]
    print(f"  ddpm-mnist5k tiny UNet, batch 256, bf16: {rows[-1]['images_per_s']:.0f} images/s "
          f"(last 20 steps; {time.perf_counter() - t0:.1f}s for 60 steps incl. start-up)")
    from hirune.training.speed import bench_train, format_result

    print(format_result(bench_train(None, {"device": "cuda"}, batch=256, steps=30, warmup=5)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
