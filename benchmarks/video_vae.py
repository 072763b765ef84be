"""CogVideoX's 3D causal VAE against the image KL autoencoder applied frame by frame, on the
moving digits (`models/video_vae.py`; Yang et al. 2024, sec. 2.1).

    python benchmarks/video_vae.py [--steps 2000] [--image-z 1 4] [--n 500] [--out bench_out/video_vae]

Trains the preset video-vae-moving-mnist5k (tiny: 16, 32, 32 channels, 4x time and 4x space,
(1, 9, 32, 32) clips -> (4, 3, 8, 8) latents, 768 numbers a clip) for --steps steps, and for each
--image-z the image KL autoencoder with the same channels, levels, KL weight and loss (2-D
convs, no middle attention) on the frames of the same training clips, z channels a frame:
8 x 8 x z numbers a frame, 576 z a clip (z = 1: 576, fewer than the video VAE's 768; z = 4:
2304, the video VAE's latent per frame without the time compression).  The image runs see the
same frames a step (the preset's clips x 9 frames) for as many steps.  Then the PSNR of each
frame index over the first --n test clips (posterior means), the mean over clips, the minutes
of training (one thread: OMP_NUM_THREADS=1; a run whose final checkpoint exists under OUT is
reused), and the parameters.  Prints one markdown table and writes OUT.md, OUT.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from hirune.data import ArrayDataset, load_dataset
from hirune.data.registry import DATASETS, DatasetSpec
from hirune.metrics import psnr
from hirune.training import load
from hirune.training.loop import train
from hirune.training.presets import PRESETS, preset_config

FRAMES_SET = "moving-mnist5k-frames-img"


def frames_of(clips: ArrayDataset) -> ArrayDataset:
    """Each clip's frames as images: (N, C, T, H, W) -> (N T, C, H, W), labels repeated."""
    x = clips.data.transpose(1, 2).flatten(0, 1)
    T = clips.data.shape[2]
    labels = clips.labels.repeat_interleave(T) if clips.labels is not None else None
    return ArrayDataset(name=FRAMES_SET, kind="image", data=x.contiguous(), labels=labels,
                        num_classes=clips.num_classes, split=clips.split, source=f"the frames of {clips.name}",
                        levels=clips.levels)


def register_frames(video_set: str) -> None:
    spec = DATASETS[video_set]
    C, T, H, W = spec.shape
    DATASETS[FRAMES_SET] = DatasetSpec(FRAMES_SET, "image", f"the frames of {video_set}", (C, H, W),
                                       spec.num_classes, spec.train_size * T, spec.test_size * T, spec.source,
                                       lambda split="train", **_: frames_of(load_dataset(video_set, split)),
                                       spec.package, spec.levels)


def per_frame_psnr(reconstruct, clips: torch.Tensor, batch: int = 32) -> list[float]:
    """The mean over clips of each frame index's PSNR (dB), and the clip mean last."""
    with torch.no_grad():
        out = torch.cat([reconstruct(c) for c in clips.split(batch)]).float()
    frames = [float(psnr(out[:, :, t], clips[:, :, t]).mean()) for t in range(clips.shape[2])]
    return frames + [float(psnr(out, clips).mean())]


def trained(cfg) -> tuple[object, float | None]:
    """The run trained (reused, with minutes None, when its final checkpoint exists) and loaded."""
    if (Path(cfg.out) / "checkpoints" / f"step_{cfg.steps:08d}").exists():
        return load(cfg.out), None
    start = time.time()
    train(cfg, progress=False)
    return load(cfg.out), (time.time() - start) / 60


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=PRESETS["video-vae-moving-mnist5k"]["steps"])
    p.add_argument("--image-z", type=int, nargs="*", default=[1, 4])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--out", default="bench_out/video_vae")
    args = p.parse_args()
    out = Path(args.out)
    preset = PRESETS["video-vae-moving-mnist5k"]
    clips = load_dataset(preset["dataset"], "test").data[: args.n]
    common = dict(steps=args.steps, sample_every=args.steps, ckpt_every=args.steps, eval_samples=0)
    rows = []

    run, minutes = trained(preset_config("video-vae-moving-mnist5k", {**common, "out": str(out / "video")}))
    latent = list(run.model.latent_shape(tuple(clips.shape[1:])))
    rows.append(dict(model="video_kl (4x time, 4x space)", latent=latent, numbers=math.prod(latent),
                     params=sum(p.numel() for p in run.model.parameters()), minutes=minutes,
                     psnr=per_frame_psnr(lambda c: run.model(c, sample=False).reconstruction, clips)))

    register_frames(preset["dataset"])
    tiny = {k: v for k, v in preset["model_config"].items() if k != "size"}
    size = {"channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "mid_attention": False}
    for z in args.image_z:
        frames_a_step = preset["batch_size"] * clips.shape[2]
        cfg = preset_config("kl-ae-mnist5k", {**common, "dataset": FRAMES_SET, "batch_size": frames_a_step,
                                              "warmup": preset["warmup"], "out": str(out / f"image-z{z}"),
                                              "model_config": {**size, **tiny, "z_channels": z}})
        run, minutes = trained(cfg)
        T = clips.shape[2]

        def frame_by_frame(c, model=run.model):
            x = c.transpose(1, 2).flatten(0, 1)
            y = model(x, sample=False).reconstruction
            return y.reshape(len(c), T, *y.shape[1:]).transpose(1, 2)

        latent = [T, *run.model.latent_shape((clips.shape[1], *clips.shape[-2:]))]
        rows.append(dict(model=f"kl_autoencoder per frame, z={z}", latent=latent, numbers=math.prod(latent),
                         params=sum(p.numel() for p in run.model.parameters()), minutes=minutes,
                         psnr=per_frame_psnr(frame_by_frame, clips)))

    T = clips.shape[2]
    head = ["model", "latent a clip", "numbers", "params", "train min"] + [f"f{t}" for t in range(T)] + ["clip"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], "x".join(map(str, r["latent"])), str(r["numbers"]), f"{r['params']:,}",
                 "reused" if r["minutes"] is None else f"{r['minutes']:.1f}"] + [f"{v:.2f}" for v in r["psnr"]]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    note = (f"\nPSNR (dB) per frame index over the first {len(clips)} test clips of {preset['dataset']}, "
            f"{args.steps} steps each, posterior means.\n")
    print(table + note)
    out.mkdir(parents=True, exist_ok=True)
    (out.parent / f"{out.name}.md").write_text(table + note)
    (out.parent / f"{out.name}.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
