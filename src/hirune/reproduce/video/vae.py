"""CogVideoX's 3D causal VAE against the image KL autoencoder applied frame by frame (Yang et al.
2024, sec. 2.1; `models/video_vae.py`), on the 9-frame moving digits.

The claim measured: a causal VAE that compresses 4x in time and 4x in space encodes the first
frame alone (so it is reconstructed best) and pools the others in pairs, then in fours; CogVideoX
buys a sequence four times shorter for the transformer with it.  Against it, the image KL
autoencoder with the same channels, levels, KL weight and loss (2-D convolutions, no middle
attention), trained on the frames of the same clips and applied to each frame: z = 1 channel a
frame is 576 numbers a clip, fewer than the video VAE's 4 x 3 x 8 x 8 = 768; z = 4 is 2304, the
video VAE's latent without the time compression.  Each is trained here at the budget (the
preset video-vae-moving-mnist5k; the image runs see the same frames a step, the preset's clips
x 9), then the PSNR of each frame index is read over the first n test clips (posterior means).
At the preset's 2000 steps the per-frame autoencoder is ahead (README: 33.5 against 29.3 dB).
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ...data import ArrayDataset, load_dataset
from ...data.registry import DATASETS, DatasetSpec
from ...playbook.report import Report, pyplot, save
from ..sampling import one_thread

PRESET = "video-vae-moving-mnist5k"
FRAMES_SET = "moving-mnist5k-frames-img"
# budget -> (training steps of every run, test clips measured, the image autoencoder's z channels)
SIZES = {"tiny": (2, 4, (1, 4)), "small": (300, 200, (1, 4)), "full": (2000, 500, (1, 4))}


def frames_of(clips: ArrayDataset) -> ArrayDataset:
    """Each clip's frames as images: (N, C, T, H, W) -> (N T, C, H, W), frame t of clip i at row
    i T + t, labels repeated."""
    x = clips.data.transpose(1, 2).flatten(0, 1)
    T = clips.data.shape[2]
    labels = clips.labels.repeat_interleave(T) if clips.labels is not None else None
    return ArrayDataset(name=FRAMES_SET, kind="image", data=x.contiguous(), labels=labels,
                        num_classes=clips.num_classes, split=clips.split, source=f"the frames of {clips.name}",
                        levels=clips.levels)


@contextmanager
def frames_registered(video_set: str):
    """The frames of `video_set` as the image set FRAMES_SET while inside (the registry restored after)."""
    spec, before = DATASETS[video_set], DATASETS.get(FRAMES_SET)
    C, T, H, W = spec.shape
    DATASETS[FRAMES_SET] = DatasetSpec(FRAMES_SET, "image", f"the frames of {video_set}", (C, H, W),
                                       spec.num_classes, spec.train_size * T, spec.test_size * T, spec.source,
                                       lambda split="train", **_: frames_of(load_dataset(video_set, split)),
                                       spec.package, spec.levels)
    try:
        yield FRAMES_SET
    finally:
        if before is None:
            del DATASETS[FRAMES_SET]
        else:
            DATASETS[FRAMES_SET] = before


def per_frame_psnr(reconstruct, clips: torch.Tensor, batch: int = 32) -> list[float]:
    """The mean over clips of each frame index's PSNR (dB), and the clip's PSNR (mean over clips) last."""
    from ...metrics import psnr

    with torch.no_grad():
        out = torch.cat([reconstruct(c) for c in clips.split(batch)]).float()
    frames = [float(psnr(out[:, :, t], clips[:, :, t]).mean()) for t in range(clips.shape[2])]
    return frames + [float(psnr(out, clips).mean())]


def trained(cfg):
    """Train `cfg` (quietly, no checkpoint: an autoencoder's checkpoint encodes 1000 training clips for
    its latent statistics, which no measurement here reads) and return (its network with the EMA
    weights copied in, in eval mode; minutes of wall time)."""
    from ...training.loop import train

    start = time.time()
    trainer = train(cfg, progress=False)
    trainer.ema.copy_to(trainer.model)
    return trainer.model.eval(), (time.time() - start) / 60


def video_vae_note(budget: str) -> Report:
    from ...training.presets import PRESETS, preset_config

    steps, n, zs = SIZES[budget]
    preset = PRESETS[PRESET]
    clips = load_dataset(preset["dataset"], "test").data[:n]
    T = clips.shape[2]
    common = dict(steps=steps, sample_every=0, ckpt_every=0, eval_samples=0, log_every=max(1, steps // 10))
    results, shown = [], {"clip": clips[0]}
    with tempfile.TemporaryDirectory() as root, one_thread():
        model, minutes = trained(preset_config(PRESET, {**common, "out": str(Path(root) / "video")}))
        video = lambda c, model=model: model(c, sample=False).reconstruction
        latent = list(model.latent_shape(tuple(clips.shape[1:])))
        results.append(dict(model="video_kl (4x time, 4x space)", latent=latent, minutes=minutes,
                            params=sum(p.numel() for p in model.parameters()),
                            psnr=per_frame_psnr(video, clips)))
        with torch.no_grad():
            shown["video_kl"] = video(clips[:1])[0]
        kl = {k: v for k, v in preset["model_config"].items() if k != "size"}
        size = {"channels": 16, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "mid_attention": False}
        with frames_registered(preset["dataset"]) as frames:
            for z in zs:
                cfg = preset_config("kl-ae-mnist5k", {
                    **common, "dataset": frames, "batch_size": preset["batch_size"] * T, "warmup": preset["warmup"],
                    "out": str(Path(root) / f"image-z{z}"), "model_config": {**size, **kl, "z_channels": z}})
                model, minutes = trained(cfg)

                def frame_by_frame(c, model=model):
                    y = model(c.transpose(1, 2).flatten(0, 1), sample=False).reconstruction
                    return y.reshape(len(c), T, *y.shape[1:]).transpose(1, 2)

                latent = [T, *model.latent_shape((clips.shape[1], *clips.shape[-2:]))]
                results.append(dict(model=f"kl_autoencoder per frame, z={z}", latent=latent, minutes=minutes,
                                    params=sum(p.numel() for p in model.parameters()),
                                    psnr=per_frame_psnr(frame_by_frame, clips)))
                with torch.no_grad():
                    shown[f"z={z}"] = frame_by_frame(clips[:1])[0]
    for r in results:
        r["numbers"] = math.prod(r["latent"])
    rows = [[r["model"], "x".join(map(str, r["latent"])), r["numbers"], r["params"], r["minutes"], *r["psnr"]]
            for r in results]
    video, *images = results
    best = max(images, key=lambda r: r["psnr"][-1])
    notes = [f"PSNR (dB) per frame index over the first {n} test clips of {preset['dataset']}, posterior means; "
             f"{steps} training steps each (the preset: {preset['steps']}), one thread, minutes of wall time",
             f"the video VAE's first frame (encoded alone): {video['psnr'][0]:.2f} dB, its other frames "
             f"{min(video['psnr'][1:T]):.2f} to {max(video['psnr'][1:T]):.2f}"
             + (" (the first frame is its best)" if video["psnr"][0] >= max(video["psnr"][1:T]) else
                " (the first frame is NOT its best at this budget)"),
             f"the clip: video VAE {video['psnr'][-1]:.2f} dB with {video['numbers']} numbers; per frame "
             + ", ".join(f"z={r['latent'][1]} {r['psnr'][-1]:.2f} dB with {r['numbers']}" for r in images)
             + (f": the per-frame autoencoder ({best['model']}) reconstructs better" if best["psnr"][-1] >
                video["psnr"][-1] else ": the video VAE reconstructs best")]
    data = {"steps": steps, "n": n, "results": results}

    def plot(path):
        plt = pyplot()
        fig = plt.figure(figsize=(11, 4))
        ax = fig.add_subplot(1, 2, 1)
        for r in results:
            ax.plot(range(T), r["psnr"][:T], marker="o", label=f"{r['model']} ({r['numbers']} numbers)")
        ax.set(xlabel="frame index", ylabel="PSNR (dB)", title=f"reconstruction per frame ({n} test clips)")
        ax.legend(fontsize=7)
        names = list(shown)
        for i, name in enumerate(names):
            for t in range(T):
                a = fig.add_subplot(len(names), 2 * T, i * 2 * T + T + t + 1)
                a.imshow(shown[name][0, t].clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
                a.set_xticks([]), a.set_yticks([])
                if t == 0:
                    a.set_ylabel(name, fontsize=7)
        save(fig, path)
    head = ["model", "latent a clip", "numbers", "params", "train min"] + [f"f{t}" for t in range(T)] + ["clip"]
    return Report("video-vae", f"the 3D causal VAE against the image autoencoder frame by frame: PSNR (dB), "
                               f"{steps} steps, {n} test clips", head, rows, notes, data, plot)
