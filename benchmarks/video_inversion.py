"""DDIM inversion of video on a trained CogVideoX run: the failure the development note
describes, its fix (reference attention to the inversion's trajectory) and hirune's exact
fixed-point inversion, side by side.

    python benchmarks/video_inversion.py RUN [--shifted RUN2] [--n 20] [--steps 50] [--scale 6]
        [--out bench_out/video_inversion] [--gif docs/video-inversion.gif]

RUN: a text-conditioned video run (`hirune train cogvideox-moving-mnist5k`).  RUN2 (optional):
a run trained with an SNR shift (process_config snr_shift > 1), for the row whose inverse
schedule dropped the shift.  The first N test clips of the run's dataset are inverted under
their own captions (scale 1, DDIM on the run's trailing grid of STEPS steps), then:

* reconstruction -- DDIM back under the same caption at scale 1, and at SCALE (classifier-free
  guidance); PSNR against the clip over every pixel, and outside the digit (2 px from its ink);
* edits -- resampled at SCALE under the caption with the digit changed (d -> d + 5 mod 10) or
  the motion reversed (left <-> right, up <-> down): the evaluator's accuracy of the new digit
  per frame, the share of clips moving the new way, and PSNR outside the original digit;

for plain inversion (and resampled from its latent one step below the end, which leaves the
step into zero terminal SNR out), plain inversion with reference attention (from the inverted noise and
from fresh noise), exact inversion (at scale 1, as the others), and exact inversion under the
guidance of the resampling (both walks in the same field, as `hirune edit` does for images).
The VAE's own reconstruction PSNR bounds them all.
The clips are every digit in turn (`evaluation.video.spread`).  Writes OUT.md, OUT.json and a
GIF of the first 6 clips, one row each: the clips; plain inversion at scale 1 and at SCALE;
reference attention at SCALE; exact inversion at 1; exact under guidance at SCALE; then the
motion edits of plain inversion, reference attention and exact inversion.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from hirune.data import load_dataset
from hirune.data.moving import DIRECTIONS
from hirune.data.video_captions import video_caption
from hirune.evaluation.video import spread, video_measures
from hirune.inference import video_inversion as V
from hirune.training import load
from hirune.video_io import write_gif

OPPOSITE = {0: 1, 1: 0, 2: 3, 3: 2}


def captions(attrs: dict, n: int, label_shift: int = 0, reverse: bool = False) -> tuple[list[str], list, list]:
    """The first n clips' captions (phrasing 0), with the digit moved by label_shift or the
    direction reversed; and the labels and directions they name."""
    out, labels, directions = [], [], []
    for i in range(n):
        label = (int(attrs["label"][i]) + label_shift) % 10
        d = int(attrs["direction"][i])
        d = OPPOSITE[d] if reverse else d
        out.append(video_caption(label, d, int(attrs["speed"][i]), bool(attrs["bounced"][i]),
                                 int(attrs["thickness"][i])))
        labels.append(label)
        directions.append(d)
    return out, labels, directions


def scores(clips, recon, outside) -> dict:
    return {"psnr": float(V.psnr(recon, clips).mean()), "psnr_outside": float(V.psnr(recon, clips, outside).mean())}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--shifted", default=None)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scale", type=float, default=6.0)
    ap.add_argument("--out", default="bench_out/video_inversion")
    ap.add_argument("--gif", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    run = load(args.run)
    test = load_dataset(run.data.name, "test")
    pick = spread(len(test.data), args.n)              # every digit in turn (the split is sorted by class)
    clips = test.data[pick]
    outside = V.outside_digit(clips)
    attrs = {k: v[pick] for k, v in test.attributes.items()}
    same, labels, dirs = captions(attrs, args.n)
    digit, digit_labels, _ = captions(attrs, args.n, label_shift=5)
    motion, _, motion_dirs = captions(attrs, args.n, reverse=True)
    fresh = torch.randn(args.n, *run.sample_shape, generator=torch.Generator().manual_seed(1))
    rows, edits, shown = [], [], {"clip": clips}
    inversions = {"plain": V.invert(run, clips, same, steps=args.steps),
                  "exact": V.invert(run, clips, same, steps=args.steps, exact=True),
                  "guided": V.invert(run, clips, same, steps=args.steps, exact=True, scale=args.scale)}
    with torch.no_grad():  # the clips' latents, as the inversions encoded them, decoded
        vae = run.decode(inversions["plain"].latents).clamp(-1, 1)
    rows.append({"method": "the VAE alone (encode, decode)", **scores(clips, vae, outside)})
    methods = [("plain inversion", "plain", False, None), ("plain + reference attention", "plain", True, None),
               ("fresh noise + reference attention", "plain", True, fresh), ("exact inversion", "exact", False, None),
               (f"exact inversion under guidance {args.scale:g}", "guided", False, None)]
    plain = inversions["plain"]  # resampled from one step below its end: the zero-SNR step left out
    inversions["below"] = dataclasses.replace(plain, noise=plain.at(float(plain.ts[1])), ts=plain.ts[1:])
    methods.insert(1, ("plain inversion, the zero-SNR step left out", "below", False, None))
    for name, inv_name, reference, noise in methods:
        inv = inversions[inv_name]
        for scale, prompts, label in ((1.0, same, "same caption, scale 1"), (args.scale, same,
                                                                              f"same caption, scale {args.scale:g}")):
            if inv_name == "guided" and scale == 1.0:
                continue
            recon, _ = V.reconstruct(run, inv, prompts, scale=scale, reference=reference, noise=noise)
            rows.append({"method": name, "setting": label, **scores(clips, recon, outside)})
            shown[(name, label)] = recon
            print(rows[-1], flush=True)
        if noise is not None or inv_name == "below":
            continue
        for what, prompts, want_labels, want_dirs in (("digit", digit, digit_labels, dirs),
                                                      ("motion", motion, labels, motion_dirs)):
            edited, _ = V.reconstruct(run, inv, prompts, scale=args.scale, reference=reference)
            measures, _ = video_measures(edited, torch.tensor(want_labels), torch.tensor(want_dirs))
            edits.append({"method": name, "edit": what, "frame_accuracy": measures["frame_accuracy"],
                          "direction_accuracy": measures["direction_accuracy"],
                          "psnr_outside": float(V.psnr(edited, clips, outside).mean())})
            shown[(name, what)] = edited
            print(edits[-1], flush=True)
    if args.shifted:
        shifted = load(args.shifted)
        for drop in (False, True):
            inv = V.invert(shifted, clips, same, steps=args.steps, drop_snr_shift=drop)
            recon, _ = V.reconstruct(shifted, inv, same)
            name = "shifted run, inverse schedule " + ("without the shift" if drop else "with the shift")
            rows.append({"method": name, "setting": "same caption, scale 1", **scores(clips, recon, outside)})
            print(rows[-1], flush=True)
    real, _ = video_measures(clips, torch.tensor(labels), torch.tensor(dirs))
    result = {"run": args.run, "n": args.n, "steps": args.steps, "scale": args.scale, "reconstruction": rows,
              "edits": edits, "real_clips": real}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = ["| method | setting | PSNR (dB) | PSNR outside the digit (dB) |", "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r.get('setting', '')} | {r['psnr']:.2f} | {r['psnr_outside']:.2f} |" for r in rows]
    lines += ["", f"Edits at scale {args.scale:g} (the real clips: frame accuracy {real['frame_accuracy']:.3f}, "
              f"direction {real['direction_accuracy']:.3f}):", "",
              "| method | edit | frame accuracy (the asked digit) | direction (the asked motion) "
              "| PSNR outside the digit (dB) |",
              "|---|---|---|---|---|"]
    lines += [f"| {e['method']} | {e['edit']} | {e['frame_accuracy']:.3f} | {e['direction_accuracy']:.3f} | "
              f"{e['psnr_outside']:.2f} |" for e in edits]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    k = min(args.n, 6)
    guided = f"exact inversion under guidance {args.scale:g}"
    scaled = f"same caption, scale {args.scale:g}"
    order = ["clip", ("plain inversion", "same caption, scale 1"), ("plain inversion", scaled),
             ("plain + reference attention", scaled), ("exact inversion", "same caption, scale 1"), (guided, scaled),
             ("plain inversion", "motion"), ("plain + reference attention", "motion"), ("exact inversion", "motion")]
    grid = torch.cat([shown[key][:k] for key in order])  # one row each, k clips (GIF_ROWS)
    write_gif(grid, args.gif or out.with_suffix(".gif"), nrow=k, scale=2)
    return result


if __name__ == "__main__":
    main()
