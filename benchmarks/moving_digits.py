"""The moving-digit clips and their measures on real data: what `evaluation.video` gives on
the real test clips (the reference a text-to-video model is read against), and on broken
variants of them, which the measures must catch.

    python benchmarks/moving_digits.py [--frames 9] [--n 500] [--seed 0] [--out DIR] [--gif PATH]

For the first n test clips of moving-mnist5k (--frames 17: moving-mnist5k-17): the dataset's
shares (directions, fast, bounced) and generation time, then `video_measures` on the real
clips and on the same clips shuffled in time, played backwards, with the digit swapped for
another's from the middle frame on (the clip n / 10 further in the class-sorted split, another
digit), and frozen on the first frame; `video_report`'s real-vs-real per-frame Frechet
distance (n training clips' frames against the test frames).  Writes OUT/moving_digits.json and
OUT/moving_digits.md; --gif PATH: a grid GIF of eight real test clips (the digits 0..7,
each direction slow and fast) with their captions printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hirune.data import load_dataset
from hirune.data.moving import DIRECTIONS
from hirune.data.video_captions import VideoCaptioner
from hirune.evaluation.video import video_measures, video_report
from hirune.video_io import write_gif


def variants(x: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The real clips x (N, 1, T, H, W) and broken versions of them."""
    g = torch.Generator().manual_seed(seed)
    n, t = len(x), x.shape[2]
    other = torch.roll(torch.arange(n), max(1, n // 10))
    return {"real": x, "shuffled": torch.stack([v[:, torch.randperm(t, generator=g)] for v in x]),
            "reversed": x.flip(2), "swapped": torch.cat([x[:, :, : t // 2], x[other][:, :, t // 2:]], 2),
            "still": x[:, :, :1].expand(-1, -1, t, -1, -1)}


def gif_clips(clips) -> torch.Tensor:
    """Eight clips of the digits 0..7: each direction slow and fast, bouncing or not in turn."""
    a = clips.attributes
    picks = []
    for j in range(8):
        d, s = j // 2, 1 + j % 2
        wanted = (a["label"] == j) & (a["direction"] == d) & (a["speed"] == s)
        bounced = wanted & (a["bounced"] == (j // 2 + j) % 2)
        picks.append(int(torch.nonzero(bounced if bounced.any() else wanted)[0]))
    return torch.tensor(picks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=9, choices=(9, 17))
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/moving_digits"))
    p.add_argument("--gif", type=Path, default=None)
    args = p.parse_args(argv)
    name = "moving-mnist5k" if args.frames == 9 else "moving-mnist5k-17"
    load_dataset("mnist5k", "all")                                   # the file read once, not timed
    clips = load_dataset(name, "test")
    start = time.perf_counter()
    load_dataset(name, "train")
    train_seconds = time.perf_counter() - start
    step = max(1, len(clips) // args.n)                              # every digit, when n < 500
    keep = torch.arange(0, len(clips), step)[: args.n]
    x, labels, a = clips.data[keep], clips.labels[keep], {k: v[keep] for k, v in clips.attributes.items()}
    out = {"dataset": name, "n": len(keep), "train_generation_seconds": round(train_seconds, 2),
           "shares": {**{d: float((a["direction"] == i).double().mean()) for i, d in enumerate(DIRECTIONS)},
                      "fast": float((a["speed"] == 2).double().mean()),
                      "bounced": float(a["bounced"].double().mean())},
           "measures": {k: video_measures(v, labels, a["direction"])[0]
                        for k, v in variants(x, args.seed).items()}}
    report = video_report(x, labels, a["direction"], seed=args.seed)
    out["frechet_real_vs_real_frames"] = report["frechet_real_vs_real_frames"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "moving_digits.json").write_text(json.dumps(out, indent=1))
    keys = ("frame_accuracy", "direction_accuracy", "temporal_consistency", "smooth_motion")
    lines = [f"{name}, {len(keep)} test clips", "", "| clips | " + " | ".join(keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {k} | " + " | ".join(f"{m[key]:.3f}" for key in keys) + " |" for k, m in out["measures"].items()]
    lines += ["", f"per-frame Frechet distance, {len(keep)} training clips' frames to the test frames (real vs "
                  f"real): {out['frechet_real_vs_real_frames']:.2f}"]
    (args.out / "moving_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.gif:
        picks = gif_clips(clips)
        write_gif(clips.data[picks], args.gif, fps=6, nrow=4, scale=3)
        texts = VideoCaptioner(clips).captions(picks, torch.zeros(len(picks), dtype=torch.long))
        print(f"\n{args.gif} ({args.gif.stat().st_size // 1024} KB), left to right, top to bottom:")
        print("\n".join(f"  {t}" for t in texts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
