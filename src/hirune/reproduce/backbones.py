"""The transformer backbones on the 8 x 8 digits, each measured at the same training steps and
scored by the shipped evaluator's Frechet distance (`digits.score`):

    dit    Peebles & Xie 2023, fig. 6 and 8: a DiT's forward Gflops, not its parameters alone,
           set its quality; a smaller patch (more tokens) or a wider model costs more Gflops
           and reaches a lower Frechet distance at the same training steps
    uvit   Bao et al. 2023, fig. 2(a): U-ViT's long skips (in-block i's tokens concatenated into
           the out-block that mirrors it) matter; the same network without them
           (`UViTConfig.long_skip=False`) samples worse at the same steps

Each network is the `dit-digits` / `uvit-digits` recipe (v-prediction, cosine schedule,
min-SNR, EMA) with its model config set here, trained by `digits.train_run` in a temporary
folder on one torch thread and sampled with DDIM (eta 0, trailing spacing).  A forward's
Gflops are counted by `torch.utils.flop_counter` on one image (a multiply-add is 2 flops).
The tiny budget (seconds) checks the pipeline only; what was measured is said under the table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..playbook.report import Report, pyplot, save
from .digits import draw, sample_grid, score, show_grids, train_run
from .sampling import one_thread

# (hidden, depth, heads, patch) per DiT; steps x batch of training, samples scored, sampler steps
_DIT_TINY = [(32, 1, 2, 4), (32, 1, 2, 2)]
_DIT = [(64, 4, 4, 4), (64, 4, 4, 2), (128, 5, 4, 4), (128, 5, 4, 2)]
# seeds: U-ViT's runs per setting; dit_seeds: each DiT's (small: one, the grid of four costs enough)
SIZES = {"tiny": dict(steps=6, batch=8, unet=None, n=48, sample_steps=8, dits=_DIT_TINY, uvit=(32, 3, 2), seeds=1,
                      dit_seeds=1),
         "small": dict(steps=600, batch=64, unet=None, n=300, sample_steps=50, dits=_DIT, uvit=(128, 7, 4),
                       seeds=2, dit_seeds=1),
         "full": dict(steps=3000, batch=64, unet=None, n=1000, sample_steps=100, dits=_DIT, uvit=(128, 7, 4),
                      seeds=3, dit_seeds=3)}


def forward_gflops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """The Gflops of one forward of `model` on one image of `shape` (C, H, W) at t = 0.5."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t = torch.zeros(1, *shape), torch.full((1,), 0.5)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops() / 1e9


def _measure(folder: Path, preset: str, size: dict, model_config: dict, seed: int) -> tuple[dict, torch.Tensor]:
    """Train one network, draw and score its samples: (its measures, the samples)."""
    run = train_run(folder, preset, size, model_config=model_config, seed=seed)
    x = draw(run, size["n"], "ddim", size["sample_steps"], spacing="trailing")
    s = score(x)
    return {"params": sum(p.numel() for p in run.model.parameters()),
            "gflops": forward_gflops(run.model, run.sample_shape), "frechet": s["frechet_distance"],
            "class_entropy": s["class_entropy_bits"], "real_vs_real": s["frechet_real_vs_real"]}, x


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _spread(values: list[float]) -> float:
    """The standard error of the mean (0 for one value)."""
    if len(values) < 2:
        return 0.0
    m = _mean(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


def _trials(budget: str, preset: str, configs: dict[str, dict], seeds: int) -> tuple[dict, dict, float]:
    """Each named model config trained with each seed: ({name: measures, frechet a list per seed},
    {name: the first seed's sample grid}, the real-vs-real reference)."""
    size = SIZES[budget]
    found, grids, reference = {}, {}, 0.0
    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        for i, (name, config) in enumerate(configs.items()):
            for seed in range(seeds):
                m, x = _measure(Path(tmp) / f"{i}-{seed}", preset, size, config, seed)
                reference = m.pop("real_vs_real")
                if seed == 0:
                    found[name] = {**m, "frechet": [], "class_entropy": []}
                    grids[name] = sample_grid(x)
                found[name]["frechet"].append(m["frechet"])
                found[name]["class_entropy"].append(m["class_entropy"])
    return found, grids, reference


def _figure(found: dict, grids: dict, reference: float, xlabel: str, title: str, by_gflops: bool):
    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, 1 + len(grids), figsize=(4.5 + 2.0 * len(grids), 3.6),
                                 gridspec_kw={"width_ratios": [2.2] + [1] * len(grids)})
        ax = axes[0]
        for i, (name, m) in enumerate(found.items()):
            x = m["gflops"] if by_gflops else i
            ax.errorbar([x], [_mean(m["frechet"])], yerr=[_spread(m["frechet"])], fmt="o", label=name, capsize=3)
        if by_gflops:
            ax.set_xscale("log")
        else:
            ax.set_xticks(range(len(found)), list(found), fontsize=8)
        ax.axhline(reference, color="grey", ls="--", label="real vs real")
        ax.set(xlabel=xlabel, ylabel="Frechet distance (lower is better)", title=title)
        ax.legend(fontsize=7)
        show_grids(axes[1:], grids)
        save(fig, path)
    return plot


def _setting(size: dict, seeds: int) -> str:
    return (f"{size['steps']} training steps x batch {size['batch']} each, {seeds} seed(s); DDIM "
            f"{size['sample_steps']} steps (trailing), n = {size['n']}")


def dit_note(budget: str) -> Report:
    """DiT (Peebles & Xie 2023, sec. 5.1): at the same training steps, the DiTs with more forward
    Gflops (a smaller patch: 4x the tokens; a wider, deeper model) reach a lower Frechet distance.
    Measured as the rank correlation of Gflops and Frechet distance over the grid of sizes."""
    size = SIZES[budget]
    configs = {f"D{h}x{d}/{p}": {"hidden_size": h, "depth": d, "num_heads": k, "patch_size": p}
               for h, d, k, p in size["dits"]}
    found, grids, reference = _trials(budget, "dit-digits", configs, size["dit_seeds"])
    rows = [[name, m["params"], m["gflops"], _mean(m["frechet"]), _spread(m["frechet"]), _mean(m["class_entropy"])]
            for name, m in found.items()]
    by_cost = sorted(found.items(), key=lambda item: item[1]["gflops"])
    fids = [_mean(m["frechet"]) for _, m in by_cost]
    rho = spearman([m["gflops"] for _, m in by_cost], fids)
    cheapest, dearest = by_cost[0], by_cost[-1]
    holds = rho < 0 and fids[-1] < fids[0]
    # each axis alone: the smaller patch at the same model; the bigger model at the same patch
    axes = {"smaller patch": [], "bigger model": []}
    for (h, d, _, p), name in zip(size["dits"], configs):
        for (h2, d2, _, p2), other in zip(size["dits"], configs):
            if (h, d) == (h2, d2) and p2 < p:
                axes["smaller patch"].append(_mean(found[other]["frechet"]) < _mean(found[name]["frechet"]))
            if p == p2 and h2 * d2 > h * d:
                axes["bigger model"].append(_mean(found[other]["frechet"]) < _mean(found[name]["frechet"]))
    every_axis = all(all(won) for won in axes.values())
    notes = [_setting(size, size["dit_seeds"])
             + f"; Frechet distance in the evaluator's features (real training digits: {reference:.3g})",
             f"Spearman rank correlation of forward Gflops and Frechet distance: {rho:+.2f}; the dearest "
             f"({dearest[0]}, {dearest[1]['gflops']:.3g} Gflops) {fids[-1]:.3g} against the cheapest ({cheapest[0]}, "
             f"{cheapest[1]['gflops']:.3g} Gflops) {fids[0]:.3g} -- "
             + ("more Gflops, lower Frechet distance along every axis, as the paper says" if holds and every_axis
                else "more Gflops lowered the Frechet distance overall but not along every axis (below): the claim "
                     "holds only in part at this budget" if holds
                else "more Gflops did not buy a lower Frechet distance: the claim does not hold at this budget")]
    notes.append("each axis alone: " + "; ".join(f"the {axis} lowered the Frechet distance in {sum(won)} of "
                                                 f"{len(won)} pairs" for axis, won in axes.items()))
    data = {"runs": found, "spearman": rho, "axes": axes, "real_vs_real": reference, "n": size["n"],
            "sample_steps": size["sample_steps"], "train_steps": size["steps"], "seeds": size["dit_seeds"]}
    plot = _figure(found, grids, reference, "forward Gflops per image", f"DiT sizes, {size['steps']} steps", True)
    return Report("dit", f"DiT: Gflops against Frechet distance at the same steps (digits, n = {size['n']})",
                  ["DiT (width x depth / patch)", "params", "Gflops", "Frechet", "+-", "class entropy (bits)"],
                  rows, notes, data, plot)


def uvit_note(budget: str) -> Report:
    """U-ViT (Bao et al. 2023, sec. 3.1, fig. 2(a)): the same U-ViT with and without its long
    skips, the same steps and seeds; the long skips should give the lower Frechet distance."""
    size = SIZES[budget]
    h, d, k = size["uvit"]
    base = {"hidden_size": h, "depth": d, "num_heads": k, "patch_size": 2}
    found, grids, reference = _trials(budget, "uvit-digits", {"long skips": {**base, "long_skip": True},
                                                              "no long skips": {**base, "long_skip": False}},
                                      size["seeds"])
    rows = [[name, m["params"], m["gflops"], _mean(m["frechet"]), _spread(m["frechet"]), _mean(m["class_entropy"])]
            for name, m in found.items()]
    with_, without = found["long skips"]["frechet"], found["no long skips"]["frechet"]
    gap = _mean(without) - _mean(with_)
    error = (_spread(with_) ** 2 + _spread(without) ** 2) ** 0.5
    clear = size["seeds"] > 1 and gap > 2 * error
    notes = [_setting(size, size["seeds"]) + f"; U-ViT {h} wide, depth {d}, 2 x 2 patches; Frechet distance in "
             f"the evaluator's features (real training digits: {reference:.3g})",
             f"Frechet {_mean(with_):.3g} with the long skips against {_mean(without):.3g} without (difference "
             f"{gap:+.3g}, standard error {error:.2g}) -- "
             + ("the long skips help, as the paper says" if clear
                else "no clear gain from the long skips (under two standard errors, or one seed): the claim does "
                     "not hold at this budget")]
    data = {"runs": found, "gap": gap, "gap_error": error, "real_vs_real": reference, "n": size["n"],
            "sample_steps": size["sample_steps"], "train_steps": size["steps"], "seeds": size["seeds"]}
    plot = _figure(found, grids, reference, "", f"U-ViT, {size['steps']} steps", False)
    return Report("uvit", f"U-ViT with and without its long skips (digits, n = {size['n']})",
                  ["U-ViT", "params", "Gflops", "Frechet", "+-", "class entropy (bits)"], rows, notes, data, plot)


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (no ties expected): Pearson's on the ranks."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"spearman needs two lists of the same length >= 2, got {len(xs)} and {len(ys)}")
    rank = lambda v: [sorted(v).index(a) for a in v]  # noqa: E731
    rx, ry = rank(xs), rank(ys)
    mx, my = _mean(rx), _mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else 0.0
