"""unCLIP end to end: text -> prior -> decoder against the decoder fed CLIP's text embedding
directly (no prior), variations, an interpolation strip and text diffs.

    python benchmarks/unclip_eval.py --prior runs/prior-mnist5k --decoder runs/unclip-decoder-mnist5k \
        [--n 500] [--text-n 100] [--scales 1 3 8] [--steps 25] [--out benchmarks/results/unclip]

With and without the prior, at each decoder guidance scale (the prior at `--prior-scale`,
best of its run's `best_of`):
  * `--n` images captioned "a handwritten <digit>" (digits in turn) against the test split:
    the shipped evaluator's Frechet distance (beside real-vs-real) and the share drawn as the
    digit named;
  * `--text-n` images per caption phrasing, the four training phrasings and three held-out
    ones (`evaluation.text.text_accuracy`): the share drawn as the digit named.
Variations (at the largest scale): `--variations` test images spread over the split, `--per`
variations each; the share the evaluator gives the source's class, and the mean RMS pixel
distance between two variations of one source (beside that from a variation to its source).
Pictures: OUT_strip.png (rows: test image a | the interpolation | test image b, pairs of
different digits) and OUT_diff.png (rows: a test image | its text diffs at amounts 0 .. 1,
"a handwritten <digit>" -> "a thick handwritten <digit>", then -> the next digit).
Writes OUT.md and OUT.json.  The machine must be otherwise idle for the timings to mean much.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

AMOUNTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _spread(count: int, total: int) -> torch.Tensor:
    return torch.linspace(0, total - 1, count).round().long() if count > 1 else torch.zeros(1, dtype=torch.long)


def text_to_image(pipe, dataset: str, n: int, text_n: int, scale: float, use_prior: bool, prior_scale: float,
                  steps: int | None) -> dict:
    from hirune.data.captions import caption
    from hirune.evaluation.text import text_accuracy
    from hirune.metrics.evaluator import evaluate_images

    def draw(prompts, seed):
        return pipe.text_to_image(prompts, prior_scale=prior_scale, decoder_scale=scale, use_prior=use_prior,
                                  steps=steps, seed=seed)

    labels = torch.arange(n) % 10
    quality = evaluate_images(dataset, draw([caption(int(k)) for k in labels], 0), labels)
    return {"scale": scale, "prior": use_prior, **quality, **text_accuracy(lambda p, k: draw(p, 1000 + k), dataset,
                                                                             text_n)}


def variations(pipe, sources: int, per: int, scale: float, steps: int | None) -> dict:
    from hirune.data import load_dataset
    from hirune.metrics.evaluator import features_and_logits, load_evaluator

    data = pipe.decoder.data.name
    test = load_dataset(data, "test")
    idx = _spread(sources, len(test.data))
    net = load_evaluator(data)
    kept, between, to_source = [], [], []
    for i, k in enumerate(idx.tolist()):
        x = test.data[k:k + 1]
        v = pipe.variations(x, per, seed=i, decoder_scale=scale, steps=steps)
        kept.append(features_and_logits(net, v)[1].argmax(1) == test.labels[k])
        rms = torch.cdist(v.flatten(1).double(), v.flatten(1).double()) / v[0].numel() ** 0.5
        between.append(rms[torch.triu_indices(per, per, 1).unbind()].mean() if per > 1 else rms.new_zeros(()))
        to_source.append(((v - x).flatten(1).double().square().mean(1).sqrt()).mean())
    return {"variation_scale": scale, "sources": len(idx), "per_source": per,
            "source_class_kept": float(torch.cat(kept).double().mean()),
            "rms_between_variations": float(torch.stack(between).mean()),
            "rms_variation_to_source": float(torch.stack(to_source).mean())}


def pictures(pipe, out: Path, pairs: int = 4, frames: int = 8, ddim_steps: int = 50, scale: float = 1.0) -> dict:
    """The interpolation strip and the text-diff grid (see the module docstring)."""
    from hirune.data import load_dataset
    from hirune.data.captions import NAMES
    from hirune.viz import image_grid

    test = load_dataset(pipe.decoder.data.name, "test")
    idx = _spread(2 * pairs, len(test.data)).tolist()       # sorted by digit on mnist5k: far apart, other digits
    rows = []
    for a, b in zip(idx[:pairs], idx[::-1][:pairs]):
        xa, xb = test.data[a:a + 1], test.data[b:b + 1]
        rows += [xa, pipe.interpolate(xa, xb, frames, ddim_steps=ddim_steps, decoder_scale=scale), xb]
    strip = image_grid(torch.cat(rows), out.with_name(out.name + "_strip.png"), nrow=frames + 2)
    rows = []
    for k in idx[:pairs]:
        x, name = test.data[k:k + 1], NAMES[int(test.labels[k])]
        other = NAMES[(int(test.labels[k]) + 1) % 10]
        for target in (f"a thick handwritten {name}", f"a handwritten {other}"):
            rows += [x, pipe.text_diff(x, f"a handwritten {name}", target, AMOUNTS, ddim_steps=ddim_steps,
                                       decoder_scale=scale)]
    diff = image_grid(torch.cat(rows), out.with_name(out.name + "_diff.png"), nrow=len(AMOUNTS) + 1)
    return {"interpolation_strip": str(strip), "text_diff": str(diff)}


def table(rows: list[dict]) -> str:
    lines = ["| prior | decoder scale | FD | FD real-vs-real | accuracy (digit named) | training phrasings | "
             "held-out phrasings |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {'yes' if r['prior'] else 'no (text emb.)'} | {r['scale']:g} | {r['frechet_distance']:.2f} | "
                     f"{r['frechet_real_vs_real']:.2f} | {r['class_accuracy']:.1%} | "
                     f"{r['train_phrasing_accuracy']:.1%} | {r['held_out_phrasing_accuracy']:.1%} |")
    return "\n".join(lines)


def evaluate(pipe, *, n: int, text_n: int, scales: list[float], prior_scale: float = 1.0, steps: int | None = None,
             sources: int = 50, per: int = 4, out: Path, frames: int = 8, ddim_steps: int = 50) -> dict:
    """Every measurement of the module docstring for the UnCLIP pipeline `pipe`; writes
    OUT.md, OUT.json and the two pictures; returns the JSON's content."""
    data = pipe.decoder.data.name
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for use_prior in (True, False):
        for scale in scales:
            start = time.perf_counter()
            rows.append({**text_to_image(pipe, data, n, text_n, scale, use_prior, prior_scale, steps),
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]), flush=True)
    result = {"dataset": data, "n": n, "text_n": text_n, "prior_scale": prior_scale, "decoder_steps": steps,
              "text_to_image": rows, "variations": variations(pipe, sources, per, max(scales), steps),
              "pictures": pictures(pipe, out, frames=frames, ddim_steps=ddim_steps)}
    v = result["variations"]
    md = (f"unCLIP on {data}: {n} images for the Frechet distance, {text_n} per phrasing; prior CFG scale "
          f"{prior_scale:g}\n\n{table(rows)}\n\nVariations (decoder scale {v['variation_scale']:g}, {v['sources']} "
          f"sources x {v['per_source']}): source class kept {v['source_class_kept']:.1%}; RMS pixel distance between "
          f"variations {v['rms_between_variations']:.3f}, variation to source {v['rms_variation_to_source']:.3f} "
          f"(pixels in [-1, 1]).\n\n![interpolation]({Path(result['pictures']['interpolation_strip']).name})\n"
          f"![text diffs]({Path(result['pictures']['text_diff']).name})\n")
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    print(md)
    return result


def main(argv=None) -> int:
    from hirune.inference.unclip import UnCLIP
    from hirune.training.loading import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prior", required=True, help="a prior run, e.g. runs/prior-mnist5k")
    p.add_argument("--decoder", required=True, help="a decoder run, e.g. runs/unclip-decoder-mnist5k")
    p.add_argument("--n", type=int, default=500, help="images for the Frechet distance, per row")
    p.add_argument("--text-n", type=int, default=100, help="images per caption phrasing")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 8.0], help="decoder CFG scales")
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=None, help="decoder sampler steps (default: the run's)")
    p.add_argument("--variations", type=int, default=50, help="source test images of the variations")
    p.add_argument("--per", type=int, default=4, help="variations per source")
    p.add_argument("--out", default="benchmarks/results/unclip")
    args = p.parse_args(argv)
    pipe = UnCLIP(load(args.prior), load(args.decoder))
    evaluate(pipe, n=args.n, text_n=args.text_n, scales=args.scales, prior_scale=args.prior_scale, steps=args.steps,
             sources=args.variations, per=args.per, out=Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
