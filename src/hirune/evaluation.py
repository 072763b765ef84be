"""Scoring trained runs: samples against held-out data (Frechet distance in the shipped
evaluator's features and class accuracy for the digit sets; sliced Wasserstein and energy
distance for the toys, each beside its real-vs-real value), held-out NLL for every family
(nats and bits/dim, one dequantization), the denoiser's x0 error across noise levels (where
a model loses), the accuracy of noise-aware classifiers across noise levels, and the
reconstructions of autoencoders."""

from __future__ import annotations

# the noise levels of `denoising_error`: fractions of the way from t_min to t_max
NOISE_FRACTIONS = (0.01, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.95, 1.0)


def evaluate_run(run, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 nll: int = 0, denoiser=None, guided_labels: bool = False) -> dict:
    """Sample `n` and score them: evaluator Frechet distance / class accuracy for digit
    sets, sliced Wasserstein / energy distance for toys, each beside its real-vs-real value.
    nll > 0: the negative log-likelihood of that many test examples (`nll_report`).
    denoiser: a guided denoiser of the run (labels drawn in turn when guided_labels).
    A classifier run reports its test accuracy at several noise levels instead, an
    autoencoder run its reconstructions of n test images (`reconstruction_report`)."""
    from .data import load_dataset
    from .generate import sample_run
    from .metrics import energy_distance, sliced_wasserstein

    if run.is_classifier:
        if nll:
            raise ValueError("a noise-aware classifier has no density: --nll needs a flow, diffusion, score "
                             "or flow-matching run")
        return {"step": run.step, "dataset": run.cfg.dataset, **classifier_accuracy(run)}
    if run.is_autoencoder:
        if nll:
            raise ValueError("an autoencoder has no density: --nll needs a flow, diffusion, score or "
                             "flow-matching run")
        return {"step": run.step, "dataset": run.cfg.dataset, **reconstruction_report(run, n)}
    out, labels = sample_run(run, n, sampler, steps, None, seed, denoiser=denoiser, guided_labels=guided_labels)
    metrics = {"step": run.step, "dataset": run.cfg.dataset,
               "sampler": "flow inverse" if run.is_flow else sampler or run.cfg.sampler, "nfe": out.nfe}
    if run.data.kind == "image":
        from .evaluator import EVALUATED, evaluate_images

        if run.cfg.dataset in EVALUATED:
            metrics.update(evaluate_images(run.cfg.dataset, out.x, labels))
    else:
        test = load_dataset(run.cfg.dataset, "test").data[:n].double()
        ref = load_dataset(run.cfg.dataset, "train").data[:n].double()
        x = out.x.double()
        metrics.update({"sliced_wasserstein": sliced_wasserstein(x, test),
                        "energy_distance": energy_distance(x, test),
                        "sliced_wasserstein_real_vs_real": sliced_wasserstein(ref, test),
                        "energy_distance_real_vs_real": energy_distance(ref, test)})
    if nll:
        metrics.update(nll_report(run, nll, seed))
    return metrics


def text_accuracy(run, n: int = 200, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                  denoiser=None) -> dict:
    """Text-to-image: for every caption phrasing of training and every held-out one
    (`data.captions`), n samples from captions naming the digits in turn, and the share the
    evaluator classifies as the digit named.  Held-out phrasings measure whether the model
    follows the caption's meaning rather than the strings it was trained on."""
    import torch

    from .data.captions import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, caption
    from .evaluator import features_and_logits, load_evaluator
    from .generate import generate

    if run.text is None:
        raise ValueError("text accuracy needs a text-conditioned run (text_encoder=tiny|minilm)")
    net = load_evaluator(run.cfg.dataset)
    labels = torch.arange(n) % 10
    out: dict = {}
    for split, templates in (("train", TRAIN_TEMPLATES), ("held_out", HELD_OUT_TEMPLATES)):
        scores = {}
        for k, template in enumerate(templates):
            prompts = [caption(int(y), template=template) for y in labels]
            x = generate(run, n, sampler, steps, None, seed + k, denoiser=denoiser, prompts=prompts,
                         progress=False)[0].x
            scores[template] = float((features_and_logits(net, x)[1].argmax(1) == labels).double().mean())
        out[f"{split}_phrasings"] = scores
        out[f"{split}_phrasing_accuracy"] = sum(scores.values()) / len(scores)
    return out


def fraction_time(process, fraction: float) -> float:
    """The time a fraction of the way from t_min to t_max (discrete processes: the nearest step)."""
    p = process
    return float(round(fraction * (p.T - 1))) if p.discrete else p.t_min + fraction * (p.t_max - p.t_min)


def denoising_error(denoiser, x0, fractions=NOISE_FRACTIONS, seed: int = 0, **cond) -> dict[str, float]:
    """Where a denoiser loses: the mean squared error of its x0 estimate per element,
    E |x0_hat(x_t, t) - x0|^2 / D, at each time `fraction_time(fraction)`, with x_t drawn
    from q(x_t | x0) with one seeded noise for all times.  The minimum at each t is the
    posterior variance Var(x0 | x_t) per element (for data N(0, I) on a variance-preserving
    process: sigma(t)^2, reached by x0_hat = alpha x_t).  cond: the network's condition
    keywords.  Returns {"x0_mse_t<t>": error} in the order of `fractions`."""
    import torch

    from .denoiser import time_batch

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)
    out = {}
    with torch.no_grad():
        for f in fractions:
            t = fraction_time(denoiser.process, f)
            x_t = denoiser.process.q_sample(x0, torch.tensor(t, dtype=torch.float64), noise)
            x0_hat = denoiser(x_t, time_batch(t, x_t), **cond).x0
            out[f"x0_mse_t{t:g}"] = float((x0_hat.double() - x0.double()).square().mean())
    return out


def denoising_report(run, n: int = 256, seed: int = 0) -> dict[str, float]:
    """`denoising_error` of a run's denoiser on its first n test examples (latent runs: their
    scaled latents, `Run.encode`), unconditionally (the null label; a text run's empty
    caption).  For comparing networks at the same step: the error at middle noise levels
    is where a digit's layout is decided."""
    from .data import load_dataset
    from .generate import condition

    if run.denoiser is None:
        raise ValueError("the denoising error needs a diffusion, score or flow-matching run, not a flow, "
                         "classifier or autoencoder")
    x0 = load_dataset(run.cfg.dataset, "test").data[:n].to(run.device)
    if run.first_stage is not None:
        x0 = run.encode(x0)
    cond = condition(run, prompts=[""] * len(x0) if run.text is not None else None)
    return denoising_error(run.denoiser, x0, seed=seed, **cond)


def classifier_accuracy(run, fractions=(0.0, 0.25, 0.5, 0.75, 0.9)) -> dict:
    """Test-split accuracy of a noise-aware classifier at times t = fraction of the way
    from t_min to t_max (x_t drawn with a fixed seed)."""
    import torch

    from .data import load_dataset
    from .denoiser import time_batch

    test = load_dataset(run.cfg.dataset, "test")
    g = torch.Generator().manual_seed(0)
    out = {}
    with torch.no_grad():
        for f in fractions:
            p = run.process
            t = fraction_time(p, f)
            x_t = p.q_sample(test.data, torch.tensor(float(t)), torch.randn(test.data.shape, generator=g))
            logits = run.model(x_t, time_batch(t, x_t))
            out[f"accuracy_t{t:g}"] = float((logits.argmax(1) == test.labels).double().mean())
    return out


def reconstruction_report(run, n: int = 1000) -> dict:
    """How well an autoencoder run reconstructs the first n test images: MSE and PSNR (dB,
    peak-to-peak 2 for images in [-1, 1]; the mean of per-image PSNRs, as LDM reports it)
    through the posterior mean (KL) or the codes (VQ); the latent shape and scale factor;
    the mean KL in nats per image (KL) or the codebook usage and perplexity over all test
    positions (VQ); for the digit sets, the evaluator's Frechet distance of the
    reconstructions to the test split (LDM's rFID with our evaluator) and its class
    accuracy on them (is the digit kept?)."""
    import torch

    from .autoencoding import latent_statistics
    from .data import load_dataset
    from .editing import psnr
    from .models.quantize import perplexity

    test = load_dataset(run.cfg.dataset, "test")
    x, labels = test.data[:n], test.labels[:n] if test.labels is not None else None
    model = run.model.eval()
    with torch.no_grad():
        out = torch.cat([model(chunk, sample=False).reconstruction for chunk in x.split(256)]).float()
        if run.cfg.model == "vq_autoencoder":
            indices = torch.cat([model.quantize(chunk).indices for chunk in x.split(256)])
        else:
            kl = torch.cat([model.encode(chunk).kl() for chunk in x.split(256)])
    mse = (out.double() - x.double()).flatten(1).pow(2).mean(1)
    stats = run.latent_stats or latent_statistics(model, run.data.data)
    report = {"examples": len(x), "mse": float(mse.mean()), "psnr_db": float(psnr(out, x).mean()),
              "latent_shape": list(model.latent_shape(tuple(x.shape[1:]))),
              "downsample_factor": model.config.downsample_factor, "scale_factor": stats["scale_factor"],
              "latent_channel_mean": stats["channel_mean"], "latent_channel_std": stats["channel_std"]}
    if run.cfg.model == "vq_autoencoder":
        K = model.config.codebook_size
        used = int((torch.bincount(indices.flatten(), minlength=K) > 0).sum())
        report.update(codebook_size=K, codes_used=used, codebook_usage=used / K,
                      codebook_perplexity=float(perplexity(indices, K)))
    else:
        report["kl_nats"] = float(kl.mean())
    from .evaluator import EVALUATED, evaluate_images

    if run.cfg.dataset in EVALUATED:
        scores = evaluate_images(run.cfg.dataset, out, labels)
        report.update({f"reconstruction_{k}": v for k, v in scores.items() if k != "num_images"})
    return report


def nll_report(run, n: int, seed: int = 0, rtol: float = 1e-5) -> dict:
    """Negative log-likelihood of n held-out examples, the same way for every family.

    Flows: exact, `log_prob`.  Diffusion, score and flow-matching runs: the probability-flow
    ODE (RK45 at rtol), with the exact divergence on 2-D toys (float64) and Hutchinson's
    estimate (one Rademacher probe per example) on images.  Images are uniformly
    dequantized with the dataset's `levels` (`likelihood.dequantize`, fixed seed) and
    reported as the discrete bound in nats and bits per dimension.  Toys report nats,
    beside the true density's NLL of the same points where the toy has one.  The standard
    error is over examples (and so includes Hutchinson's noise)."""
    import math

    if getattr(run, "first_stage", None) is not None:
        raise ValueError("--nll needs a density over pixels; a latent diffusion run models its autoencoder's "
                         "latents (and the decoder is not invertible)")

    import torch

    from .data import load_dataset
    from .data.toys import TOYS
    from .likelihood import bits_per_dim, check_quantized, dequantize, discrete_nll, ode_log_likelihood

    if not run.is_flow and run.denoiser is None:
        raise ValueError("no likelihood for this run: it has neither a flow's change of variables nor a "
                         "denoiser whose probability-flow ODE defines a density (flow, diffusion, score or "
                         "flow-matching runs have one)")
    x = load_dataset(run.cfg.dataset, "test").data[:n]
    g = torch.Generator().manual_seed(seed)
    image = run.data.kind == "image"
    levels = run.data.levels if image else None
    if levels:
        check_quantized(x, levels)
        x = dequantize(x, levels, g)
    dims = x[0].numel()
    out = {"nll_examples": len(x)}
    if run.is_flow:
        with torch.no_grad():
            log_p = run.model.double()(x.double()).float()
        run.model.float()
        out["nll_method"] = "exact (change of variables)"
    else:
        x = x if image else x.double()
        if not image:
            run.model.double()
        from .guidance import unclipped

        denoiser = unclipped(run.denoiser)[0]  # the model's own density: no x0 clipping
        try:
            result = ode_log_likelihood(denoiser, x, divergence="hutchinson" if image else "exact",
                                        generator=g, rtol=rtol, atol=rtol)
        finally:
            run.model.float()
        log_p = result.log_prob
        out["nll_method"] = f"probability-flow ODE, {'Hutchinson' if image else 'exact'} divergence"
        out["nll_nfe"] = result.nfe
    nll = discrete_nll(log_p, dims, levels) if levels else -log_p
    out.update({"nll_nats": float(nll.mean()), "nll_stderr": float(nll.std() / math.sqrt(len(x)))})
    if image:
        out["bits_per_dim"] = float(bits_per_dim(nll, dims).mean())
        out["bits_per_dim_stderr"] = float(bits_per_dim(nll, dims).std() / math.sqrt(len(x)))
        out["dequantization"] = f"uniform, {levels} levels"
    mixture = getattr(TOYS.get(run.cfg.dataset), "mixture", None)
    if mixture is not None:
        out["nll_true_nats"] = float(-mixture.log_prob(x.double()).mean())
    return out

