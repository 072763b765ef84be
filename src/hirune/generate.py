"""Sampling from trained runs, with or without guidance: what `hirune sample`, `hirune eval`
and the guidance sweep share.

    run = load_run("runs/cond")
    d = guide(run, "cfg", scale=3.0)                        # or "classifier", classifier=load_run(...)
    out, labels = generate(run, 64, denoiser=d, labels=class_labels(run, 64, per_class=True))
"""

from __future__ import annotations

import torch

GUIDANCE = ("none", "cfg", "classifier")


def guide(run, method: str = "none", scale: float = 1.0, *, classifier=None, rescale: float = 0.0,
          interval: tuple[float, float] | None = None):
    """The denoiser of a trained run under `method` (none | cfg | classifier) at `scale`
    (the convention of `hirune.guidance`: 1 = conditional, 0 = unconditional).

    cfg needs a class-conditional run trained with condition dropout (p_uncond > 0);
    classifier needs `classifier`, a trained noise-aware classifier run on the same
    process and data shape, and guides the run's unconditional prediction (the null
    label of a conditional run), so s = 0 is the same model for both methods."""
    from .guidance import ClassifierFreeGuidance, ClassifierGuidance

    if method not in GUIDANCE:
        raise ValueError(f"unknown guidance {method!r}; valid: {list(GUIDANCE)}")
    if run.is_classifier:
        raise ValueError("this run is a classifier; sample from a diffusion run and pass it as the classifier")
    if run.is_flow and method != "none":
        raise ValueError("guidance needs a diffusion or flow-matching run; this is a normalizing flow")
    if method == "none":
        return run.denoiser
    if method == "cfg":
        if not (run.cfg.class_conditional or run.text is not None):
            raise ValueError("cfg guidance needs a class- or text-conditional run (class_conditional=true or "
                             "text_encoder=tiny|minilm)")
        if run.cfg.p_uncond <= 0:
            raise ValueError("cfg guidance needs a run trained with condition dropout (p_uncond > 0): "
                             "its null condition was never trained")
        # the null condition: the null label, or the encoding of the empty caption
        null = run.text.null(run.device) if run.text is not None else {"y": run.data.num_classes}
        return ClassifierFreeGuidance(run.denoiser, scale, null, rescale=rescale, interval=interval)
    if classifier is None:
        raise ValueError("classifier guidance needs a trained classifier run (--classifier RUN)")
    if not classifier.is_classifier:
        raise ValueError("the --classifier run is not a classifier (objective='classifier')")
    same = (classifier.cfg.process, classifier.cfg.process_config) == (run.cfg.process, run.cfg.process_config)
    if not same:
        raise ValueError(f"the classifier was trained on process {classifier.cfg.process} "
                         f"{classifier.cfg.process_config}, the model on {run.cfg.process} "
                         f"{run.cfg.process_config}; they must match")
    if classifier.data.shape != run.data.shape:
        raise ValueError(f"classifier input shape {classifier.data.shape} != the model's {run.data.shape}")
    if rescale or interval:
        raise ValueError("rescale and interval apply to cfg guidance")
    # the classifier guides the unconditional model: on a conditional run, its null label
    return ClassifierGuidance(run.denoiser, classifier.model, scale, pass_cond=False)


def class_labels(run, n: int, label: int | None = None, per_class: bool = False) -> torch.Tensor:
    """Labels for n samples: all `label`, or the classes in turn (0 1 2 ... 0 1 2 ...), or
    with per_class, n // num_classes of each class in a block (rows of a class grid)."""
    k = run.data.num_classes
    if not k:
        raise ValueError(f"{run.cfg.dataset} has no classes")
    if label is not None:
        if not 0 <= label < k:
            raise ValueError(f"class {label} is out of range; valid: 0..{k - 1}")
        return torch.full((n,), label)
    if per_class:
        return torch.arange(k).repeat_interleave(max(1, n // k))
    return torch.arange(n) % k


def condition(run, labels: torch.Tensor | None = None, prompts: list[str] | None = None) -> dict:
    """The network's condition keywords: class labels `y`, or a text run's encoded `prompts`
    (which such a run needs, and no other run takes), or none."""
    if (prompts is not None) != (run.text is not None):
        raise ValueError("prompts go with a text-conditioned run (text_encoder=tiny|minilm), and such a run "
                         "needs them")
    if prompts is not None:
        return run.text(list(prompts), run.device)
    return {"y": labels.to(run.device)} if labels is not None else {}


def generate(run, n: int, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
             seed: int = 0, *, denoiser=None, labels: torch.Tensor | None = None, trajectory: bool = False,
             progress: bool = True, temperature: float = 1.0, prompts: list[str] | None = None):
    """n samples of a run (its EMA weights as loaded), with `denoiser` (default: the run's
    own) and `labels` as the condition y where given, or `prompts` (one caption per
    sample) for a text-conditioned run; returns (SampleOutput, labels).
    A normalizing-flow run samples z ~ N(0, temperature^2 I) and inverts (one pass, no
    sampler; its trajectory is [z, x])."""
    from .samplers import SampleOutput, sample

    if run.is_flow:
        if labels is not None or denoiser is not None:
            raise ValueError("flows here are unconditional: no labels or guidance")
        g = torch.Generator(device=run.device).manual_seed(seed)
        with torch.no_grad():
            z = torch.randn(n, run.model.dim, generator=g, device=run.device) * temperature
            x = run.model.decode(z)
        return SampleOutput(x, 1, [z.reshape(x.shape), x] if trajectory else None), None
    if temperature != 1.0:
        raise ValueError("temperature applies to normalizing flows")
    denoiser = denoiser if denoiser is not None else run.denoiser
    cond = condition(run, labels, prompts)
    if labels is not None:
        n = len(labels)
    if prompts is not None:
        n = len(prompts)
    with torch.no_grad():
        out = sample(denoiser, (n, *run.sample_shape), sampler or run.cfg.sampler, steps or run.cfg.sample_steps,
                     spacing, seed=seed, cond=cond, device=run.device, return_trajectory=trajectory,
                     progress=progress)
        if run.first_stage is not None:  # latent diffusion: decode the latents (and the trajectory)
            frames = [run.decode(f) for f in out.trajectory] if out.trajectory is not None else None
            out = SampleOutput(run.decode(out.x), out.nfe, frames)
    return out, labels


def sample_run(run, n: int, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
               seed: int = 0, label: int | None = None, trajectory: bool = False, denoiser=None,
               per_class: bool = False, guided_labels: bool = False, temperature: float = 1.0,
               prompt: str | None = None):
    """`generate` with the labels a run needs: class labels for conditional runs (or when a
    classifier guides, `guided_labels`), all `label`, or a class grid (`per_class`); for
    text-conditioned runs all `prompt`, or "a handwritten <digit>" for those labels."""
    labels = None
    if run.text is not None:  # captions; the digit each names, where it comes from a label
        from .data.captions import caption

        labels = None if prompt is not None else class_labels(run, n, label, per_class)
        prompts = [prompt] * n if prompt is not None else [caption(int(k)) for k in labels]
        out, _ = generate(run, len(prompts), sampler, steps, spacing, seed, denoiser=denoiser,
                          trajectory=trajectory, prompts=prompts)
        return out, labels
    if prompt is not None:
        raise ValueError("--prompt needs a text-conditioned run (text_encoder=tiny|minilm)")
    if run.cfg.class_conditional or guided_labels:
        labels = class_labels(run, n, label, per_class)
    elif label is not None or per_class:
        raise ValueError("--class and --class-grid need a class-conditional run (class_conditional=true) "
                         "or classifier guidance")
    return generate(run, n, sampler, steps, spacing, seed, denoiser=denoiser, labels=labels, trajectory=trajectory,
                    temperature=temperature)
