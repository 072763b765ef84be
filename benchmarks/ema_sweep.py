"""One training run, several weight averages: which EMA samples best at a budget.

    python benchmarks/ema_sweep.py PRESET [key=value ...] --out RUN [--samples 1000] [--seeds 0 1 2]
        [--decays 0.99 0.999] [--sigma-rels 0.05 0.1 0.2] [--eval-only]

An average of the weights does not change the training (it only reads the weights), so one run
serves them all: beside the run's own EMA (its config's `ema_decay`, or `ema_gamma`) it keeps a
constant-decay EMA per `--decays` (with hirune's warm-up) and a power EMA per `--sigma-rels`
(Karras et al. 2024; `training/ema.py`), each updated after every optimizer step, and writes
them to RUN/ema_variants/<name>.safetensors when the run ends.  Each average is then sampled
with the run's sampler and scored as `hirune eval RUN --n SAMPLES --seed S` scores it: the
Frechet distance in the shipped evaluator's features (mean and spread, max - min, over the
seeds) and the class entropy.  Prints the table and writes RUN/ema_sweep.json.

The run trains from scratch (the extra averages are not in its checkpoints, so it cannot
resume); `--eval-only` scores the averages a finished run already wrote.  The autoencoder of a
latent preset must exist (`hirune train kl-ae-mnist5k` first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from hirune.training import trainer as trainer_module
from hirune.training.ema import EMA, gamma_of_sigma_rel
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import parse_preset_args, preset_config

VARIANTS = "ema_variants"


def variant_specs(decays: list[float], widths: list[float]) -> dict[str, dict]:
    """name -> EMA keyword arguments."""
    specs = {f"decay {d:g}": {"decay": d} for d in decays}
    specs.update({f"power sigma_rel {w:g}": {"gamma": gamma_of_sigma_rel(w)} for w in widths})
    return specs


def train_with_variants(cfg, specs: dict[str, dict]) -> float:
    """Train `cfg` with the extra averages beside its EMA; write them; the training seconds."""
    kept: dict[str, EMA] = {}

    class Beside(EMA):  # the trainer's EMA, which also updates the extra averages
        def __init__(self, model, *args, **kwargs):
            super().__init__(model, *args, **kwargs)
            kept.update({name: EMA(model, **spec) for name, spec in specs.items()})

        def update(self, model):
            super().update(model)
            for average in kept.values():
                average.update(model)

    original, trainer_module.EMA = trainer_module.EMA, Beside
    try:
        start = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - start
    finally:
        trainer_module.EMA = original
    folder = Path(cfg.out) / VARIANTS
    folder.mkdir(exist_ok=True)
    for name, average in kept.items():
        save_file({k: v.contiguous() for k, v in average.state_dict().items()}, folder / f"{name}.safetensors")
    return seconds


def score(out: str, samples: int, seeds: list[int]) -> dict[str, dict]:
    """Each average of the run (its own EMA first) sampled and scored for every seed."""
    run = load(out)
    own = {k: v.clone() for k, v in run.model.state_dict().items()}
    averages = {f"own (ema_decay {run.cfg.ema_decay:g}, ema_gamma {run.cfg.ema_gamma:g})": {}}
    for path in sorted((Path(out) / VARIANTS).glob("*.safetensors")):
        averages[path.stem] = load_file(path)
    table = {}
    for name, weights in averages.items():
        run.model.load_state_dict({**own, **weights})
        scores = [run.evaluate(samples, seed=seed) for seed in seeds]
        distances = [s["frechet_distance"] for s in scores]
        table[name] = {"frechet_mean": statistics.mean(distances), "frechet_spread": max(distances) - min(distances),
                       "frechet": distances, "class_entropy_bits": statistics.mean(s["class_entropy_bits"]
                                                                                   for s in scores),
                       "real_vs_real": scores[0]["frechet_real_vs_real"], "sampler": scores[0]["sampler"],
                       "nfe": scores[0]["nfe"]}
        print(f"{name:40s} Frechet {table[name]['frechet_mean']:.2f} (spread {table[name]['frechet_spread']:.2f}: "
              + ", ".join(f"{d:.2f}" for d in distances) + f"), entropy {table[name]['class_entropy_bits']:.2f}",
              flush=True)
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("items", nargs="+", help="PRESET [key=value ...], as `hirune train` takes them")
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--decays", type=float, nargs="*", default=[0.99, 0.999])
    p.add_argument("--sigma-rels", type=float, nargs="*", default=[0.05, 0.1, 0.2])
    p.add_argument("--eval-only", action="store_true")
    args = p.parse_args()
    preset, overrides = parse_preset_args(args.items)
    cfg = preset_config(preset, {**overrides, "out": args.out, "eval_samples": 0})
    seconds = None
    if not args.eval_only:
        seconds = train_with_variants(cfg, variant_specs(args.decays, args.sigma_rels))
    torch.manual_seed(0)
    table = score(args.out, args.samples, args.seeds)
    result = {"items": args.items, "train_seconds": seconds, "samples": args.samples, "seeds": args.seeds,
              "averages": table}
    (Path(args.out) / "ema_sweep.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
