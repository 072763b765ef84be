"""unCLIP's prior: how close its sampled CLIP image embeddings come to the true ones.

    python benchmarks/unclip_prior.py runs/prior-mnist5k [--n 500] [--scales 1 2 4] [--steps 64]
                                      [--out benchmarks/results/unclip_prior]

On n test digits (spread over the split) with their captions in the training phrasings and
in the held-out phrasings, at each guidance scale: the mean cosine similarity to the true
test image embedding of the prior's sample (best of 2 by similarity to the caption's text
embedding, and best of 1), beside the CLIP text embedding used directly as the guess (the
"no prior" baseline, the same at every scale); and the share of each whose nearest class
prompt ("an image of a {name}", CLIP zero-shot) is the captioned digit (the true image
embeddings' share is the ceiling).  Writes OUT.md (a markdown table) and OUT.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

GUESSES = ("best_of_2", "best_of_1", "text_embedding")


def table(results: list[dict]) -> str:
    lines = ["| scale | phrasing | cos best-of-2 | cos best-of-1 | cos text emb. | zero-shot best-of-2 | "
             "zero-shot best-of-1 | zero-shot text emb. |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for phrasing in ("train", "held_out"):
            cos = " | ".join(f"{r[f'{phrasing}/{g}/cosine']:.4f}" for g in GUESSES)
            zs = " | ".join(f"{r[f'{phrasing}/{g}/zero_shot']:.3f}" for g in GUESSES)
            lines.append(f"| {r['scale']:g} | {phrasing} | {cos} | {zs} |")
    return "\n".join(lines)


def main() -> None:
    from hirune.training.loading import load

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a trained prior run, e.g. runs/prior-mnist5k")
    p.add_argument("--n", type=int, default=500, help="test digits")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="CFG scales (1: conditional)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the run's sample_steps)")
    p.add_argument("--sampler", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/unclip_prior")
    args = p.parse_args()

    run = load(args.run)
    results = []
    for scale in args.scales:
        start = time.perf_counter()
        r = run.evaluate(args.n, scale=scale, steps=args.steps, sampler=args.sampler, seed=args.seed)
        r["seconds"] = round(time.perf_counter() - start, 1)
        results.append(r)
        print(f"scale {scale:g}: {r['seconds']} s", flush=True)
    header = (f"unCLIP prior {args.run} (step {run.step}, clip {run.config.clip}), {args.n} test digits of "
              f"{run.data.name}, sampler {args.sampler or run.config.sampler} x {args.steps or run.config.sample_steps}"
              f" steps; zero-shot of the true image embeddings: {results[0]['true_image_zero_shot']:.3f}")
    md = f"{header}\n\n{table(results)}\n"
    print(md)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"run": args.run, "n": args.n, "results": results}, indent=1))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
