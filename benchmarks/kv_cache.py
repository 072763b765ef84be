"""DALL-E sampling with and without the key/value cache: seconds per batch and the ratio,
in one run, with the tokens checked equal.

Without the cache every token recomputes the transformer over the whole prefix (text_len
+ n positions for the n-th code); with it each token computes one position and attends to
the kept keys and values.  Both draw from the same generator seed, so they must give the
same codes token for token (checked; the model runs in float64 so rounding cannot flip a
draw).  The two take turns `--repeats` times (so load on a shared machine hits both
alike); the median time of each is reported.

    python benchmarks/kv_cache.py                       # a dalle-mnist5k-sized net, 7 x 7 codes
    python benchmarks/kv_cache.py --run runs/dalle-mnist5k --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a trained dalle run (default: a fresh net of dalle-mnist5k's size)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from hirune.models import build_model
    from hirune.sampling.autoregressive import sample_image_tokens

    if args.run:
        from hirune.training.loading import load

        model = load(args.run).model
    else:
        torch.manual_seed(0)
        model = build_model("dalle", text_vocab=128, text_len=24, num_codes=256, image_len=49, width=args.width,
                            depth=args.depth, heads=4)
    model = model.double().eval()
    c = model.config
    text = torch.randint(1, c.text_vocab, (args.batch, c.text_len), generator=torch.Generator().manual_seed(1))
    times: dict[bool, list[float]] = {True: [], False: []}
    codes = {}
    for _ in range(args.repeats):
        for use_cache in (True, False):
            start = time.perf_counter()
            codes[use_cache] = sample_image_tokens(model, text, c.image_len, use_cache=use_cache, top_k=32,
                                                   generator=torch.Generator().manual_seed(0))
            times[use_cache].append(time.perf_counter() - start)
    same = torch.equal(codes[True], codes[False])
    cached, full = statistics.median(times[True]), statistics.median(times[False])
    print(f"dalle sampling, batch {args.batch}, {c.text_len} text + {c.image_len} image tokens, width {c.width}, "
          f"depth {c.depth}, {args.threads} thread(s), float64, median of {args.repeats}")
    print(f"  without cache  {full:8.3f} s")
    print(f"  with cache     {cached:8.3f} s")
    print(f"  speed-up       {full / cached:8.2f} x   (same tokens: {same})")
    if not same:
        raise SystemExit("the cached and uncached samples differ")


if __name__ == "__main__":
    main()
