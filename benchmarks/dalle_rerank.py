"""DALL-E's reranking measured: N candidates per caption, the best kept by a CLIP run's
similarity (`inference.rerank`), for N = 1, 4, 16, with and without classifier-free
guidance on the logits.

For each (scale, N): `--n` samples per caption phrasing (the four training phrasings and
the three held-out ones, digits in turn), scored by whether the shipped evaluator sees the
digit named (`evaluation.text`), and `--samples` samples of "a handwritten <digit>"
against the test split (Frechet distance and class accuracy, `evaluation.quality`).  The
candidates of one caption share nothing but the caption; N = 1 is plain sampling.

    python benchmarks/dalle_rerank.py runs/dalle-mnist5k runs/clip-mnist5k --ns 1,4,16 --scales 1,3
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a dalle run")
    p.add_argument("clip", help="a CLIP run on the same dataset")
    p.add_argument("--ns", default="1,4,16", help="candidates per caption")
    p.add_argument("--scales", default="1,3", help="classifier-free guidance scales (1: off)")
    p.add_argument("--n", type=int, default=50, help="samples per caption phrasing")
    p.add_argument("--samples", type=int, default=500, help="samples against the test split")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from hirune.data.captions import caption
    from hirune.evaluation.quality import sample_quality
    from hirune.evaluation.text import text_accuracy
    from hirune.inference.rerank import load_scorer, sample_reranked
    from hirune.training.loading import load

    torch.set_grad_enabled(False)
    run = load(args.run)
    scorer = load_scorer(args.clip, run.data.name)
    print(json.dumps({"run": args.run, "step": run.step, "clip": args.clip, "clip_step": scorer.step,
                      "parameters": sum(t.numel() for t in run.model.parameters())}), flush=True)
    for scale in (float(s) for s in args.scales.split(",")):
        for n in (int(k) for k in args.ns.split(",")):
            start = time.perf_counter()

            def draw(prompts: list[str], k: int) -> torch.Tensor:
                def candidates(words: list[str]) -> torch.Tensor:
                    return run.generate(len(words), seed=args.seed + k, prompts=words, scale=scale,
                                        progress=False)[0].x
                return sample_reranked(candidates, prompts, n, scorer)[0]

            labels = torch.arange(args.samples) % 10
            x = draw([caption(int(y)) for y in labels], 100)
            row = {"scale": scale, "rerank": n, **sample_quality(run.data.name, "image", x, labels),
                   **text_accuracy(draw, run.data.name, args.n)}
            row["seconds"] = round(time.perf_counter() - start, 1)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
