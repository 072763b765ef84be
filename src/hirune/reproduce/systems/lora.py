"""LoRA (Hu et al. 2021, secs. 4 and 7): a frozen weight W plus a low-rank update (alpha / r) B A
with B zero at the start, so only r (d_in + d_out) numbers per layer train.  The claims: the
adapter is a small share of the network (what a run ships, and AdamW's state, shrink with r),
and fine-tuning through it adapts a model to a new task nearly as well as training every weight.

Measured here on a new domain: a trained digit run (the base) is tuned for the same steps on
`mnist5k-inverted` (x -> -x, white backgrounds) by LoRA on q, k, v and proj of every attention at
several ranks and by full fine-tuning (`hirune train lora|finetune`'s defaults: LoRA lr 1e-3,
alpha = rank; full lr 1e-4), then each draws samples (DDIM, seed 0) scored by the Frechet
distance to the domain's test split in the shipped evaluator's features.  Columns: the weights
that train (and their share of the base's), the bytes shipped beyond the base (peft's
adapter_model.safetensors, or the network's model.safetensors), AdamW's state in bytes, the
median time of a step.  Last, LoRA's equal-parameter comparison: rank 2 on q, k, v, proj
against rank 8 on q alone (4 x 2 = 8 rank-units on layers of one width).  Sizes are exact at
every budget; whether LoRA adapts as well is the budget's measurement (the report's notes).
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .bases import TINY_UNET, timed_tuning, train_base

# budget -> (base preset, its steps, its overrides), domain, tuning steps, ranks, samples scored, DDIM steps
SIZES = {
    "tiny": (("vpred-digits", 2, {"batch_size": 8, "model_config": TINY_UNET}), "digits", 2, (1, 4), 20, 2),
    "small": (("vpred-mnist5k", 300, {"batch_size": 32, "model_config": TINY_UNET}), "mnist5k-inverted", 80,
              (1, 4, 16), 200, 10),
    "full": (("text-mnist5k", 1000, {}), "mnist5k-inverted", 250, (1, 4, 16), 300, 25),
}


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The bytes of the optimizer's state tensors (AdamW: two moments and a step per weight)."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t))


def frechet(run, domain: str, n: int, steps: int) -> dict:
    """Frechet distance of n DDIM samples of `run` (seed 0) to `domain`'s test split."""
    from ...inference.generate import generate
    from ...metrics.evaluator import evaluate_images

    out, _ = generate(run, n, "ddim", steps, seed=0, progress=False)
    return evaluate_images(domain, out.x.cpu().clamp(-1, 1))


def tune(base: Path, out: Path, kind: str, domain: str, steps: int, n: int, sample_steps: int, **settings) -> dict:
    """Tune `base` on `domain` for `steps` steps (kind lora | finetune), time the steps, score the samples."""
    from ...checkpoint import latest_checkpoint
    from ...models import lora
    from ...training import load

    trainer, times = timed_tuning(kind, base, {"dataset": domain, "steps": steps, "ckpt_every": steps, "out": str(out),
                                               **settings})
    trainable, total = lora.trainable_count(trainer.model)
    shipped = out / "adapter" / lora.ADAPTER_WEIGHTS if kind == "lora" else latest_checkpoint(out) / "model.safetensors"
    row = {"kind": kind, **settings, "trainable": trainable, "base_parameters": total - trainable if kind == "lora"
           else total, "file_bytes": shipped.stat().st_size, "optimizer_bytes": optimizer_bytes(trainer.optimizer),
           "ms_per_step": 1000 * statistics.median(times[1:] or times)}
    del trainer
    scores = frechet(load(out), domain, n, sample_steps)
    return {**row, "frechet_distance": scores["frechet_distance"], "real_vs_real": scores["frechet_real_vs_real"]}


def _verdict(full: float, lora: float, base: float) -> str:
    """The adaptation result in words; distances within 2% of each other count as equal."""
    def near(a, b):
        return abs(a - b) <= 0.02 * max(a, b)
    if min(full, lora) > 0.9 * base:
        return ("no row adapts at this budget: none is 10% below the untuned base (too few steps; the EMA weights "
                "sampled still hold most of the base)")
    if near(full, lora):
        return "LoRA adapts as well as full fine-tuning"
    return ("full fine-tuning adapts better than every LoRA row" if full < lora else
            "a LoRA row adapts better than full fine-tuning")


def lora_note(budget: str) -> Report:
    from ...training import load

    (preset, base_steps, overrides), domain, steps, ranks, n, sample_steps = SIZES[budget]
    tunings = {f"LoRA rank {r} (q, k, v, proj)": ("lora", {"lora_rank": r}) for r in ranks}
    tunings["full fine-tuning"] = ("finetune", {})
    pair = ("LoRA rank 2 on q, k, v, proj", "LoRA rank 8 on q alone")
    tunings[pair[0]] = ("lora", {"lora_rank": 2})
    tunings[pair[1]] = ("lora", {"lora_rank": 8, "lora_targets": "q"})
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = train_base(preset, root / "base", base_steps, **overrides)
        base_fd = frechet(load(base), domain, n, sample_steps)["frechet_distance"]
        results = {name: tune(base, root / f"tuned{i}", kind, domain, steps, n, sample_steps, **settings)
                   for i, (name, (kind, settings)) in enumerate(tunings.items())}
    rows = [["none (the base)", 0, 0.0, "-", "-", "-", base_fd]]
    rows += [[name, r["trainable"], r["trainable"] / r["base_parameters"], r["file_bytes"], r["optimizer_bytes"],
              r["ms_per_step"], r["frechet_distance"]] for name, r in results.items()]
    real = next(iter(results.values()))["real_vs_real"]
    rows.append(["real vs real", "-", "-", "-", "-", "-", real])
    full = results["full fine-tuning"]
    loras = {name: r for name, r in results.items() if r["kind"] == "lora"}
    best = min(loras, key=lambda k: loras[k]["frechet_distance"])
    largest = max(loras.values(), key=lambda r: r["file_bytes"])
    smallest, share = min(r["file_bytes"] for r in loras.values()), largest["file_bytes"] / full["file_bytes"]
    equal = [loras[name]["frechet_distance"] for name in pair]
    notes = [f"base: {preset} trained {base_steps} steps ({full['trainable']:,} weights), then each row {steps} steps "
             f"on {domain} from the base's EMA weights; {n} samples a row (DDIM {sample_steps} steps), Frechet "
             "distance to the domain's test split (lower is better)",
             f"the adapters ship {smallest:,} to {largest['file_bytes']:,} bytes against {full['file_bytes']:,} for "
             f"the fine-tuned network ({share:.1%} at most); AdamW's state "
             f"{largest['optimizer_bytes'] / full['optimizer_bytes']:.1%} of full fine-tuning's at most",
             f"adaptation: full fine-tuning {full['frechet_distance']:.4g}, the best LoRA ({best}) "
             f"{loras[best]['frechet_distance']:.4g}, the base before tuning {base_fd:.4g}: "
             + _verdict(full["frechet_distance"], loras[best]["frechet_distance"], base_fd),
             f"equal parameters ({loras[pair[0]]['trainable']:,} each): rank 2 on q, k, v, proj {equal[0]:.4g} "
             f"against rank 8 on q alone {equal[1]:.4g}"]
    data = {"budget": budget, "base": {"preset": preset, "steps": base_steps, "frechet_distance": base_fd},
            "domain": domain, "steps": steps, "n": n, "sample_steps": sample_steps, "rows": results,
            "real_vs_real": real, "threads": torch.get_num_threads()}

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in results.items():
            ax.scatter(r["trainable"], r["frechet_distance"], label=name, marker="s" if r["kind"] != "lora" else "o")
        ax.axhline(base_fd, color="grey", ls="--", label="the base, untuned")
        ax.axhline(real, color="grey", ls=":", label="real vs real")
        ax.set(xscale="log", xlabel="trainable weights", ylabel=f"Frechet distance to {domain}",
               title=f"LoRA against full fine-tuning, {steps} steps each")
        ax.legend(fontsize=7)
        save(fig, path)
    return Report("lora", f"tuning a trained run to {domain} for {steps} steps: LoRA ranks against full fine-tuning",
                  ["tuning", "trainable", "share", "file bytes", "optimizer bytes", "ms / step", "Frechet distance"],
                  rows, notes, data, plot)
