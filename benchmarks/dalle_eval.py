"""A trained dalle run on MNIST 5k: text-to-image accuracy with and without classifier-free
guidance, the Frechet distance to the test split, and priming.

For each guidance scale: 500 samples captioned "a handwritten <digit>" (digits in turn)
against the test split (the shipped evaluator's Frechet distance and class accuracy), then
`--n` samples per caption phrasing, training and held-out (`evaluation.text`), scored by
whether the evaluator sees the digit named.  Priming: the first `--rows` code rows of the
first `--prime` test digits, the rest drawn under the null caption (unguided), and the
share of completions the evaluator gives the real digit's class.

    python benchmarks/dalle_eval.py runs/dalle-mnist5k --scales 1,3 --n 100
"""

from __future__ import annotations

import argparse
import json
import time


def priming(run, count: int, rows: int, seed: int = 0) -> dict:
    from hirune.data import load_dataset
    from hirune.metrics.evaluator import features_and_logits, load_evaluator

    test = load_dataset(run.data.name, "test")
    x, labels = test.data[:count], test.labels[:count]
    out, _ = run.generate(count, prime=x, rows=rows, seed=seed, progress=False)
    net = load_evaluator(run.data.name)
    kept = (features_and_logits(net, out.x)[1].argmax(1) == labels).double().mean()
    real = (features_and_logits(net, x)[1].argmax(1) == labels).double().mean()
    recon = run.image_tokenizer.decode(run.image_tokenizer.encode(x))
    tokenized = (features_and_logits(net, recon)[1].argmax(1) == labels).double().mean()
    return {"prime_rows": rows, "prime_grid_rows": run.grid[0], "primed_images": count,
            "primed_class_kept": float(kept), "real_images_accuracy": float(real),
            "tokenized_images_accuracy": float(tokenized)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--scales", default="1,3")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--n", type=int, default=100, help="samples per caption phrasing")
    p.add_argument("--samples", type=int, default=500, help="samples against the test split")
    p.add_argument("--prime", type=int, default=200, help="test digits completed from their first rows (0: off)")
    p.add_argument("--rows", type=int, default=3)
    args = p.parse_args()

    from hirune.training.loading import load

    run = load(args.run)
    print(json.dumps({"run": args.run, "step": run.step,
                      "parameters": sum(t.numel() for t in run.model.parameters())}), flush=True)
    for scale in (float(s) for s in args.scales.split(",")):
        start = time.perf_counter()
        m = run.evaluate(args.samples, text_accuracy=args.n, scale=scale, top_k=args.top_k, seed=0)
        print(json.dumps({"scale": scale, "top_k": args.top_k, **m, "seconds": round(time.perf_counter() - start, 1)}),
              flush=True)
    if args.prime:
        print(json.dumps(priming(run, args.prime, args.rows)), flush=True)


if __name__ == "__main__":
    main()
