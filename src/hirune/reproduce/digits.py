"""The diffusion notes on the 8 x 8 digits: networks trained here, at the budget, and scored
by the shipped evaluator (`metrics.evaluator`: the Frechet distance of the samples to the
test split in the evaluator's features, beside that of real training digits, and the entropy
of the classes it reads) or by the variational bound the runs are trained on.

    ddpm            Ho et al. 2020, table 2: L_simple against the true bound's weighting; the
                    two fixed variances beta and beta-tilde
    improved-ddpm   Nichol & Dhariwal 2021: the learned variance (L_hybrid) at few respaced
                    steps and its bound; the cosine schedule against the linear one
    v-prediction    Lin et al. 2023: eps refused at zero terminal SNR, v works; trailing
                    spacing and the rescaled schedule against the samples' brightness bias

Every network is the digits' UNet of the `PRESET-digits` presets (the tiny budget: a smaller
one, trained for seconds, where only the pipeline is checked), trained by `training.train`
into a temporary folder on one torch thread, sampled with `sampling.sample` from its EMA
weights.  The claims need the small budget or more; what was measured is said under the
table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..playbook.report import Report, pyplot, save
from .sampling import one_thread

# steps x batch of training, the UNet (None: the preset's), samples scored, sampler steps
_TINY_UNET = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}
SIZES = {"tiny": dict(steps=8, batch=8, unet=_TINY_UNET, n=48, sample_steps=10),
         "small": dict(steps=400, batch=64, unet=None, n=300, sample_steps=100),
         "full": dict(steps=3000, batch=64, unet=None, n=1000, sample_steps=1000)}


def train_run(folder: Path, preset: str, size: dict, **overrides):
    """Train `preset` (a `PRESET-digits` name) for size's steps into `folder`; the loaded run."""
    from ..training import load, preset_config, train

    fields = {"out": str(folder), "steps": size["steps"], "batch_size": size["batch"], "sample_every": 0,
              "ckpt_every": size["steps"], "log_every": size["steps"], "eval_samples": 0,
              "warmup": min(100, size["steps"] // 5), **overrides}
    if size["unet"] is not None:
        fields["model_config"] = size["unet"]
    train(preset_config(preset, fields), progress=False)
    return load(folder)


@torch.no_grad()
def draw(run, n: int, sampler: str, steps: int, seed: int = 0, **options) -> torch.Tensor:
    """n samples of `run` in [-1, 1], (n, 1, 8, 8)."""
    from ..sampling import sample

    return sample(run.denoiser, (n, *run.sample_shape), sampler, steps, seed=seed, **options).x.clamp(-1, 1)


def score(images: torch.Tensor) -> dict:
    """The evaluator's Frechet distance to the test digits, its real-vs-real reference, class entropy."""
    from ..metrics.evaluator import evaluate_images

    return evaluate_images("digits", images)


def sample_grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """The first nrow^2 images as one (H, W) picture in [0, 1], for imshow."""
    from ..video_io import tile

    x = ((images[: nrow * nrow] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    return tile(x, nrow, 1, pad_value=255)[..., 0].float() / 255


def show_grids(axes, grids: dict[str, torch.Tensor], fontsize: int = 8) -> None:
    """Each named sample grid (`sample_grid`) on its own axes, titled, without ticks."""
    for ax, (name, grid) in zip(axes, grids.items()):
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=fontsize)
        ax.axis("off")


def _panels(report_grids: dict[str, torch.Tensor], bars: dict[str, float], reference: float, ylabel: str, title: str):
    """A figure writer: bars of the Frechet distances (the real-vs-real line) and a grid per named sample set."""
    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, 1 + len(report_grids), figsize=(4.5 + 2.2 * len(report_grids), 3.6),
                                 gridspec_kw={"width_ratios": [2.2] + [1] * len(report_grids)})
        ax = axes[0]
        ax.bar(range(len(bars)), list(bars.values()), color="C0")
        ax.set_xticks(range(len(bars)), list(bars), rotation=35, ha="right", fontsize=7)
        ax.axhline(reference, color="grey", ls="--", label="real vs real")
        ax.set(ylabel=ylabel, title=title)
        ax.legend(fontsize=8)
        show_grids(axes[1:], report_grids)
        save(fig, path)
    return plot


def ddpm_note(budget: str) -> Report:
    """DDPM (Ho et al. 2020, sec. 3.4 and table 2): training on L_simple, the unweighted eps error,
    gives better samples than the true variational bound, whose weight on the eps error
    is large at low noise; and with many steps the two fixed reverse variances, beta_t (the
    upper bound, "large") and beta-tilde_t (the posterior's, "small"), sample alike.

    Measured on the VP SDE (the continuous-time limit of DDPM's linear betas, `process vp`), where
    the bound's weighting exists in closed form: lambda(t) = g^2 / sigma^2 = -d log SNR / dt on the
    eps error (`objectives.weighting`, likelihood; t importance-sampled, uniform in log SNR).  Two
    eps networks, the same steps and batch, L_simple (weighting none) and the bound (likelihood);
    each sampled by DDPM's ancestral sampler with either variance; scored by the evaluator's Frechet
    distance."""
    size = SIZES[budget]
    n, steps = size["n"], size["sample_steps"]
    rows, data, grids = [], {"frechet": {}, "class_entropy": {}, "n": n, "sample_steps": steps,
                             "train_steps": size["steps"]}, {}
    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        for loss, weighting in (("L_simple", "none"), ("L_vlb", "likelihood")):
            run = train_run(Path(tmp) / loss, "ddpm-digits", size, process="vp", weighting=weighting)
            for variance in ("small", "large"):
                x = draw(run, n, "ddpm", steps, variance=variance)
                s = score(x)
                key = f"{loss} {variance}"
                data["frechet"][key], data["class_entropy"][key] = s["frechet_distance"], s["class_entropy_bits"]
                data["real_vs_real"] = s["frechet_real_vs_real"]
                rows.append([loss, variance, s["frechet_distance"], s["class_entropy_bits"]])
                if variance == "small":
                    grids[loss] = sample_grid(x)
    f = data["frechet"]
    simple, vlb = min(f["L_simple small"], f["L_simple large"]), min(f["L_vlb small"], f["L_vlb large"])
    notes = [f"{size['steps']} training steps x batch {size['batch']} each; DDPM ancestral, {steps} steps, n = {n}; "
             f"Frechet distance in the evaluator's features; real training digits: {data['real_vs_real']:.3g}",
             f"the loss: L_simple {simple:.3g} against the bound's weighting {vlb:.3g} (best variance of each): "
             + ("L_simple ahead, as the paper says" if simple < vlb else "the bound is not behind here: the paper's "
                "claim does not hold at this budget"),
             f"the variance (L_simple): beta-tilde {f['L_simple small']:.3g}, beta {f['L_simple large']:.3g} "
             f"({abs(f['L_simple small'] - f['L_simple large']) / min(f['L_simple small'], f['L_simple large']):.0%}"
             f" apart at {steps} steps; the paper: alike at 1000)"]
    plot = _panels(grids, f, data["real_vs_real"], "Frechet distance (lower is better)", "DDPM: loss x variance")
    return Report("ddpm", f"DDPM on the digits: L_simple against the bound, two fixed variances (n = {n})",
                  ["loss", "variance", "Frechet", "class entropy (bits)"], rows, notes, data, plot)


@torch.no_grad()
def variational_bound(run, x0: torch.Tensor, variance: str, draws: int, seed: int = 0) -> float:
    """The bound -log p(x0) <= L_T + sum_t L_t of a DDPM run on the images x0 (B, 1, 8, 8), in bits
    per dimension (Improved DDPM eqs. 4-6, data on 256 bins): the sum over the T steps estimated as
    T E_t[L_t] with `draws` times per image, one in each of `draws` equal strata of [0, T).  The
    reverse variance is "learned" (the run's own, Improved DDPM eq. 15), "small" (beta-tilde) or
    "large" (beta)."""
    from ..objectives.diffusion import normal_kl, vlb_terms

    process, g = run.denoiser.process, torch.Generator().manual_seed(seed)
    T, total = process.T, 0.0
    for k in range(draws):
        t = ((k + torch.rand(len(x0), generator=g, dtype=torch.float64)) * T / draws).floor()
        x_t = process.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=x0.dtype))
        pred = run.denoiser(x_t, t)
        frac = pred.var_frac if variance == "learned" else torch.full_like(x0, float(variance == "large"))
        total += float(vlb_terms(process, x0, x_t, t, pred.x0, frac).mean())
    abar = process.alphas_cumprod[-1].to(x0)
    prior = normal_kl(abar.sqrt() * x0, torch.log(1 - abar), torch.zeros_like(x0), torch.zeros_like(x0))
    return T * total / draws + float(prior.mean()) / 0.6931471805599453


IDDPM_STEPS = {"tiny": (5, 10), "small": (25, 50, 100), "full": (25, 50, 100, 1000)}
IDDPM_BOUND = {"tiny": (16, 4), "small": (300, 50), "full": (500, 200)}   # test images, times per image
# the runs: (name, preset, overrides, the variances it is sampled and bounded with)
IDDPM_RUNS = (("linear L_simple", "ddpm-digits", {}, ("small", "large")),
              ("cosine L_simple", "ddpm-digits", {"process_config": {"schedule": "cosine"}}, ("small", "large")),
              ("cosine L_hybrid", "iddpm-digits", {}, ("learned", "small")))


def improved_ddpm_note(budget: str) -> Report:
    """Improved DDPM (Nichol & Dhariwal 2021, secs. 3.1, 3.2 and 4.4, figs. 8 and 9): a network that
    also learns the reverse variance, Sigma = exp(v log beta + (1 - v) log beta-tilde) trained by
    L_hybrid = L_simple + 0.001 L_vlb, keeps its sample quality when sampled with few respaced steps,
    where the fixed variances degrade, and has a better variational bound; the cosine schedule
    beside the linear one.

    Measured: three eps networks of the same size and steps -- linear betas and L_simple (DDPM),
    cosine betas and L_simple, cosine betas and L_hybrid (the `iddpm` preset, loss-aware times) --
    each sampled by the ancestral sampler at 25, 50 and 100 evenly respaced steps (linspace) with
    the fixed variances, the hybrid network also with its learned one (the same mean: only the
    variance differs); Frechet distance of the samples, and each run's bound on test digits
    (`variational_bound`, bits/dim)."""
    from ..data import load_dataset

    size, grid = SIZES[budget], IDDPM_STEPS[budget]
    n, (m, draws) = size["n"], IDDPM_BOUND[budget]
    test = load_dataset("digits", "test").images[:m]
    rows, curves, bounds, grids, reference = [], {}, {}, {}, 0.0
    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        for name, preset, overrides, variances in IDDPM_RUNS:
            run = train_run(Path(tmp) / name.replace(" ", "-"), preset, size, **overrides)
            for variance in variances:
                key = f"{name}, {variance}"
                curves[key], bounds[key] = [], variational_bound(run, test, variance, draws)
                for steps in grid:
                    x = draw(run, n, "ddpm", steps, spacing="linspace", variance=variance)
                    s = score(x)
                    curves[key].append(s["frechet_distance"])
                    reference = s["frechet_real_vs_real"]
                grids[key] = sample_grid(x)
                rows.append([name, variance, *curves[key], bounds[key]])
    hybrid, fixed = curves["cosine L_hybrid, learned"], curves["cosine L_hybrid, small"]
    cos, lin = min(curves["cosine L_simple, small"][0], curves["cosine L_simple, large"][0]), \
        min(curves["linear L_simple, small"][0], curves["linear L_simple, large"][0])
    notes = [f"{size['steps']} training steps x batch {size['batch']} each; DDPM ancestral sampling at {grid} evenly "
             f"respaced steps, n = {n}; Frechet distance in the evaluator's features (real training digits: "
             f"{reference:.3g}); the bound on {m} test digits, {draws} times each (bits/dim, 256 bins, L_T included)",
             f"the learned variance at {grid[0]} steps: {hybrid[0]:.3g} against {fixed[0]:.3g} with beta-tilde "
             f"(the same network); at {grid[-1]}: {hybrid[-1]:.3g} and {fixed[-1]:.3g} -- "
             + ("the learned variance ahead at the fewest steps, as the paper says" if hybrid[0] < fixed[0] else
                "the learned variance not ahead at the fewest steps here: the claim does not hold at this budget"),
             f"the bound: learned {bounds['cosine L_hybrid, learned']:.3g} bits/dim against the best fixed "
             f"{min(v for k, v in bounds.items() if not k.endswith('learned')):.3g} -- "
             + ("the learned variance's bound is the best" if bounds["cosine L_hybrid, learned"] ==
                min(bounds.values()) else "the learned variance's bound is not the best here"),
             f"the schedule (L_simple, best fixed variance, {grid[0]} steps): cosine {cos:.3g}, linear {lin:.3g}"]

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})
        for key, values in curves.items():
            axes[0].plot(grid, values, marker="o", label=f"{key} ({bounds[key]:.2f} bits/dim)")
        axes[0].axhline(reference, color="grey", ls="--", label="real vs real")
        axes[0].set(xscale="log", xlabel="respaced sampling steps", ylabel="Frechet distance (lower is better)",
                    title="Improved DDPM: the learned variance at few steps")
        axes[0].legend(fontsize=7)
        show_grids(axes[1:], {f"{key}, {grid[-1]} steps": grids[key]
                              for key in ("cosine L_hybrid, learned", "cosine L_hybrid, small")})
        save(fig, path)
    data = {"grid": list(grid), "frechet": curves, "bound_bits_per_dim": bounds, "real_vs_real": reference, "n": n,
            "bound_images": m, "bound_draws": draws, "train_steps": size["steps"]}
    return Report("improved-ddpm", f"Improved DDPM on the digits: Frechet distance at respaced steps, the bound "
                  f"(n = {n})", ["run", "variance", *(f"{s} steps" for s in grid), "bound (bits/dim)"],
                  rows, notes, data, plot)


VPRED_STEPS = {"tiny": 10, "small": 50, "full": 50}
# the runs: (name, overrides of ddpm-digits), each sampled by DDIM with both spacings
VPRED_RUNS = (("linear, eps", {}),
              ("zero-terminal-SNR, v", {"prediction": "v", "process_config": {"schedule": "linear",
                                                                              "zero_terminal_snr": True}}))


def brightness(images: torch.Tensor) -> tuple[float, float]:
    """The mean over images of each image's mean pixel, and its spread (std) over images."""
    per_image = images.flatten(1).mean(1).double()
    return float(per_image.mean()), float(per_image.std())


def brightness_verdict(closer_by: float, error: float) -> str:
    """What a brightness gap `closer_by` (flawed gap - fixed gap) with standard error `error` says."""
    if closer_by > 2 * error:
        return "the fixed schedule and spacing are closer to the data, as Lin et al. say"
    if closer_by < -2 * error:
        return "the fix is further from the data's brightness here: the claim does not hold at this budget"
    return "the two are within two standard errors: this budget cannot tell them apart"


def v_prediction_note(budget: str) -> Report:
    """Zero terminal SNR and v-prediction (Lin et al. 2023, secs. 3.1-3.3; Salimans & Ho 2022, app. D):
    a schedule whose last step still holds some signal (linear betas: SNR(T) = 4e-5) trains the
    network on x_T that leaks the image's mean, but sampling starts from pure noise, so the samples'
    brightness is pulled to the middle; the sampler's first step should be t = T (trailing spacing),
    not T - T / S + 1 (leading).  Rescaling the schedule to SNR(T) = 0 fixes the training side, and
    there eps-prediction is undefined at the last step (x0 = (x - sigma eps) / alpha with alpha = 0:
    hirune refuses it) while v-prediction (v = alpha eps - sigma x0, which is -x0 at T) works.

    Measured on the digits: the refusal; an eps network on linear betas and a v network on the
    rescaled zero-terminal-SNR betas (the same UNet, steps, loss weighting), each sampled by DDIM
    (eta 0) with leading and trailing spacing; the mean and the spread over images of each image's
    mean pixel beside the test digits', and the evaluator's Frechet distance."""
    from ..data import load_dataset
    from ..process import DiscreteVP
    from ..process.denoiser import check_prediction_suits

    size, steps = SIZES[budget], VPRED_STEPS[budget]
    n = size["n"]
    try:
        check_prediction_suits("eps", DiscreteVP("linear", zero_terminal_snr=True))
        refusal = None
    except ValueError as e:
        refusal = str(e)
    data_mean, data_spread = brightness(load_dataset("digits", "test").images)
    rows = [["test digits", "", data_mean, data_spread, ""]]
    found, grids, reference = {}, {}, 0.0
    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        for name, overrides in VPRED_RUNS:
            run = train_run(Path(tmp) / name.split(",")[0], "ddpm-digits", size, **overrides)
            for spacing in ("leading", "trailing"):
                x = draw(run, n, "ddim", steps, spacing=spacing)
                mean, spread = brightness(x)
                s = score(x)
                reference = s["frechet_real_vs_real"]
                found[f"{name}, {spacing}"] = {"mean": mean, "spread": spread, "frechet": s["frechet_distance"]}
                rows.append([name, spacing, mean, spread, s["frechet_distance"]])
                grids[f"{name}, {spacing}"] = sample_grid(x)
    flawed, fixed = found["linear, eps, leading"], found["zero-terminal-SNR, v, trailing"]
    gap = lambda r: abs(r["mean"] - data_mean)  # noqa: E731
    # the standard error of the difference of the two mean brightnesses (n samples each)
    error = (flawed["spread"] ** 2 / n + fixed["spread"] ** 2 / n) ** 0.5
    verdict = brightness_verdict(gap(flawed) - gap(fixed), error)
    spacing = max(abs(found[f"{name}, leading"]["mean"] - found[f"{name}, trailing"]["mean"]) for name, _ in VPRED_RUNS)
    notes = [f"{size['steps']} training steps x batch {size['batch']} each (no loss weighting); DDIM eta 0, {steps} "
             f"steps, n = {n}; brightness = each image's mean pixel in [-1, 1]: its mean and spread over images; "
             f"Frechet distance in the evaluator's features (real training digits: {reference:.3g})",
             "eps-prediction on the zero-terminal-SNR schedule: " + (f"refused ({refusal})" if refusal else
                                                                     "NOT refused"),
             f"brightness off the data's by {gap(flawed):.3g} (eps, linear, leading) against {gap(fixed):.3g} "
             f"(v, zero terminal SNR, trailing), standard error of the difference {error:.2g}; spread "
             f"{flawed['spread']:.3g} and {fixed['spread']:.3g} against the data's {data_spread:.3g} -- {verdict}",
             f"leading against trailing spacing moves the mean brightness by at most {spacing:.2g}",
             f"Frechet: {flawed['frechet']:.3g} (flawed) against {fixed['frechet']:.3g} (fixed)"]

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, 1 + len(grids), figsize=(4.5 + 2.2 * len(grids), 3.6),
                                 gridspec_kw={"width_ratios": [2.2] + [1] * len(grids)})
        for i, (key, r) in enumerate(found.items()):
            axes[0].errorbar([i], [r["mean"]], yerr=[r["spread"]], fmt="o", capsize=4)
        axes[0].axhspan(data_mean - data_spread, data_mean + data_spread, color="grey", alpha=0.2,
                        label="test digits (mean +- spread)")
        axes[0].axhline(data_mean, color="grey")
        axes[0].set_xticks(range(len(found)), list(found), rotation=35, ha="right", fontsize=7)
        axes[0].set(ylabel="mean pixel of a sample", title="brightness of the samples")
        axes[0].legend(fontsize=7)
        show_grids(axes[1:], grids, fontsize=7)
        save(fig, path)
    data = {"samples": found, "data_mean": data_mean, "data_spread": data_spread, "eps_refused": refusal,
            "closer_by": gap(flawed) - gap(fixed), "standard_error": error,
            "real_vs_real": reference, "n": n, "sample_steps": steps, "train_steps": size["steps"]}
    return Report("v-prediction", f"zero terminal SNR, v-prediction and trailing spacing on the digits (n = {n})",
                  ["run", "spacing", "brightness", "spread", "Frechet"], rows, notes, data, plot)
