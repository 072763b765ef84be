"""Sampling a trained diffusion run: its condition (class labels or captions), its guided
denoiser, and `generate`, the one entry point from a run to samples.

    run = load("runs/cond-mnist5k")
    out, labels = run.generate(64, per_class=True)                 # a class grid
    d = run.guide("cfg", scale=3.0)                                # or "classifier", classifier=load(...)
    out, labels = run.generate(64, denoiser=d, label=7)
    out, _ = text_run.generate(8, prompt="a thick handwritten seven")
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.sizes import check_count
from ..sampling import SampleOutput
from . import buckets, embedding, micro, superres
from .base import check_sample_count, sample_chunks

GUIDANCE = ("none", "cfg", "classifier")


def class_labels(run, n: int, label: int | None = None, per_class: bool = False) -> Tensor:
    """Labels for n samples: all `label`, or the classes in turn (0 1 2 ... 0 1 2 ...), or
    with per_class, n // num_classes of each class in a block (rows of a class grid)."""
    k = run.data.num_classes
    if not k:
        raise ValueError(f"{run.data.name} has no classes")
    if label is not None:
        check_labels(run, torch.tensor([label]))
        return torch.full((n,), label)
    if per_class:
        return torch.arange(k).repeat_interleave(max(1, n // k))
    return torch.arange(n) % k


def check_labels(run, labels: Tensor) -> None:
    """Class labels of the run's dataset: each in 0..num_classes - 1."""
    k = run.data.num_classes
    if not k:
        raise ValueError(f"{run.data.name} has no classes")
    bad = labels[(labels < 0) | (labels >= k)]
    if len(bad):
        raise ValueError(f"class {int(bad[0])} is out of range; valid: 0..{k - 1}")


def condition(run, labels: Tensor | None = None, prompts: list[str] | None = None) -> dict:
    """The network's condition keywords: class labels `y` (checked against the classes), or
    a text run's encoded `prompts` (which such a run needs, and no other run takes), or none."""
    if (prompts is not None) != (run.text is not None):
        raise ValueError("prompts go with a text-conditioned run (text_encoder=tiny|minilm|tiny+minilm), and such "
                         "a run needs them")
    if prompts is not None:
        return run.text(list(prompts), run.device)
    if labels is None:
        return {}
    check_labels(run, labels)
    return {"y": labels.to(run.device)}


def guide(run, method: str = "none", scale: float = 1.0, *, classifier=None, rescale: float = 0.0,
          interval: tuple[float, float] | None = None, threshold: str | None = None,
          percentile: float = 0.995):
    """The run's denoiser under `method` (none | cfg | classifier) at `scale` (the convention
    of `hirune.sampling.guidance`: 1 = conditional, 0 = unconditional).

    cfg needs a class- or text-conditional run trained with condition dropout (p_uncond >
    0); classifier needs `classifier`, a loaded noise-aware classifier run on the same
    process and data shape, and guides the run's unconditional prediction (the null label
    of a conditional run), so s = 0 is the same model for both methods.

    threshold: None keeps the run's own x0 clipping (its `clip_x0` setting: static for
    pixel images); none | static | dynamic (Imagen's, at `percentile`; see
    `process.thresholding`) replaces it on the returned denoiser, applied after guidance.
    Refused for latent runs (latents are not in [-1, 1]) and data that are not images."""
    from ..process.thresholding import make_threshold, with_clip
    from ..sampling.guidance import ClassifierFreeGuidance, ClassifierGuidance

    if threshold is not None:  # the guided denoiser, its clipping (applied after guidance) replaced
        clip = make_threshold(threshold, percentile)
        if run.first_stage is not None:
            raise ValueError(f"threshold={threshold} is not valid for a latent diffusion run: its samples are "
                             "autoencoder latents, not pixels in [-1, 1]; valid: leave threshold unset")
        if run.data.kind != "image":
            raise ValueError(f"threshold={threshold} is not valid for {run.data.kind} data ({run.data.name}): "
                             "thresholding bounds pixels to [-1, 1]; valid: leave threshold unset")
        return with_clip(guide(run, method, scale, classifier=classifier, rescale=rescale, interval=interval),
                         clip)
    if method not in GUIDANCE:
        raise ValueError(f"unknown guidance {method!r}; valid: {list(GUIDANCE)}")
    config = run.config
    if method == "none":
        return run.denoiser
    if method == "cfg":
        if not (config.class_conditional or run.text is not None or config.clip):
            raise ValueError("cfg guidance needs a class- or text-conditional run (class_conditional=true or "
                             "text_encoder=tiny|minilm|tiny+minilm)")
        if config.p_uncond <= 0:
            raise ValueError("cfg guidance needs a run trained with condition dropout (p_uncond > 0): "
                             "its null condition was never trained")
        # the null condition: the null label, or the encoding of the empty caption
        null = run.text.null(run.device) if run.text is not None else {} if config.clip else {"y": run.data.num_classes}
        null = {**null, **embedding.null_condition(run)}  # an unCLIP decoder's zero CLIP embedding
        null = {**null, **superres.null_condition(run)}  # a super-resolution run's low-res input: both branches
        null = {**null, **micro.null_condition(run)}  # SDXL's sizes and crop: both branches
        return ClassifierFreeGuidance(run.denoiser, scale, null, rescale=rescale, interval=interval)
    if classifier is None:
        raise ValueError("classifier guidance needs a trained classifier run (--classifier RUN)")
    if classifier.name != "classifier":
        raise ValueError(f"the --classifier run is a {classifier.name} run, not a noise-aware classifier")
    same = (classifier.config.process, classifier.config.process_config) == (config.process, config.process_config)
    if not same:
        raise ValueError(f"the classifier was trained on process {classifier.config.process} "
                         f"{classifier.config.process_config}, the model on {config.process} "
                         f"{config.process_config}; they must match")
    if classifier.data.shape != run.data.shape:
        raise ValueError(f"classifier input shape {classifier.data.shape} != the model's {run.data.shape}")
    if rescale or interval:
        raise ValueError("rescale and interval apply to cfg guidance")
    # the classifier guides the unconditional model: on a conditional run, its null label
    return ClassifierGuidance(run.denoiser, classifier.model, scale, pass_cond=False)


def generate(run, n: int, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
             seed: int = 0, *, denoiser=None, labels: Tensor | None = None, prompts: list[str] | None = None,
             label: int | None = None, per_class: bool = False, prompt: str | None = None,
             guided_labels: bool = False, trajectory: bool = False, progress: bool = True,
             temperature: float = 1.0, embeddings: Tensor | None = None, low_res: Tensor | None = None,
             aug_level: float = 0.0, size: tuple[int, int] | None = None,
             original_size: int | tuple[int, int] | None = None, crop: tuple[int, int] | None = None,
             callback=None):
    """n samples of a run (its EMA weights as loaded) in data space; returns (SampleOutput,
    labels or None).

    The condition: `labels` (n,) or `prompts` (one caption each) where given; else what the
    run needs -- class labels for conditional runs (or when a classifier guides,
    `guided_labels`): all `label`, or a class grid (`per_class`), or the classes in turn;
    for text runs all `prompt`, or "a handwritten <digit>" for those labels.  `denoiser`:
    the run's own (default) or a guided one (`guide`); the sampler and its steps default to
    the run's preview settings.  Latent diffusion decodes the samples (the trajectory too).

    More than `SAMPLE_CHUNK` samples are drawn in chunks, the k-th with seed + k (`sample_chunks`),
    so memory stays bounded and a count within one chunk gives the samples it always gave;
    `nfe` is the network evaluations per sample.  A trajectory is for one chunk.

    An unCLIP decoder run (clip=RUN) samples from `embeddings` (n, D), one CLIP image
    embedding per sample (`families.embedding`), and needs them.

    A super-resolution run (low_res > 0) reads `low_res`, one low-resolution image (C,
    low_res, low_res) per sample, augmented at the fixed level `aug_level` (noise seeded by
    the chunk's seed); by default the held-out test images of the labels, downsampled.

    A run with aspect-ratio buckets (buckets=true) samples at `size` (H, W), one of its
    buckets (default: the first; `families.buckets.sample_shape`).

    A micro-conditioned run (SDXL, `families.micro`) is told `original_size` (h, w) or h
    (default: the image's size) and `crop` (top, left) (default (0, 0): uncropped).

    `callback({"i", "t", "x", "x0"})` is the sampler's, called after each step of each chunk
    (in the diffusion's space: latents for latent runs); it sees, never changes, the samples."""
    if temperature != 1.0:
        raise ValueError("temperature applies to normalizing flows")
    if steps is not None:
        check_count("steps", steps, note=" (None: the run's sample_steps)")
    shape = buckets.sample_shape(run, size)
    if labels is None and prompts is None:
        check_sample_count(run.data, n, trajectory)  # before a label is made
        labels, prompts = _default_condition(run, n, label, per_class, prompt, guided_labels)
    elif label is not None or per_class or prompt is not None:
        raise ValueError("give labels / prompts, or label / per_class / prompt, not both")
    n = check_sample_count(run.data, len(prompts) if prompts is not None else len(labels) if labels is not None else n,
                           trajectory)
    embedding.check_count(embeddings, n)
    d = denoiser if denoiser is not None else run.denoiser
    if run.config.low_res and low_res is None:
        low_res = superres.test_low_res(run, labels, n)
    if low_res is not None and len(low_res) != n:
        raise ValueError(f"{len(low_res)} low_res images for {n} samples; give one per sample")
    sampler, steps = sampler or run.config.sampler, run.config.sample_steps if steps is None else steps
    outs = []
    for rows, chunk_seed in sample_chunks(n, seed):
        # a text run's labels name the digits of its captions; the network sees the captions
        cond = condition(run, labels[rows] if labels is not None and prompts is None else None,
                         prompts[rows] if prompts is not None else None)
        cond = {**cond, **embedding.condition(run, embeddings[rows] if embeddings is not None else None)}
        cond = {**cond, **superres.sampling_condition(run, low_res[rows] if low_res is not None else None,
                                                      aug_level, chunk_seed)}
        cond = {**cond, **micro.sampling_condition(run, rows.stop - rows.start, original_size, crop, shape[1:])}
        outs.append(_sample(run, d, (rows.stop - rows.start, *shape), cond, sampler, steps, spacing, chunk_seed,
                            trajectory, progress, callback))
    if len(outs) == 1:
        return outs[0], labels
    return SampleOutput(torch.cat([o.x for o in outs]), max(o.nfe for o in outs)), labels


def _sample(run, denoiser, shape: tuple[int, ...], cond: dict, sampler: str, steps: int, spacing, seed: int,
            trajectory: bool, progress: bool, callback=None):
    """Samples of `shape` (n, ...) in the diffusion's space, from `seed` under the network's
    condition keywords `cond`, in data space."""
    from ..sampling import sample

    with torch.no_grad():
        out = sample(denoiser, shape, sampler, steps, spacing, seed=seed, cond=cond,
                     device=run.device, return_trajectory=trajectory, progress=progress, callback=callback)
        if run.first_stage is not None:  # latent diffusion: decode the latents (and the trajectory)
            frames = [run.decode(f) for f in out.trajectory] if out.trajectory is not None else None
            out = SampleOutput(run.decode(out.x), out.nfe, frames)
    return out


def _default_condition(run, n, label, per_class, prompt, guided_labels) -> tuple[Tensor | None, list | None]:
    if run.text is not None:  # captions; the digit each names, where it comes from a label
        from ..data.captions import caption

        labels = None if prompt is not None else class_labels(run, n, label, per_class)
        return labels, [prompt] * n if prompt is not None else [caption(int(k)) for k in labels]
    if prompt is not None:
        raise ValueError("--prompt needs a text-conditioned run (text_encoder=tiny|minilm|tiny+minilm)")
    if run.config.class_conditional or guided_labels:
        return class_labels(run, n, label, per_class), None
    if label is not None or per_class:
        raise ValueError("--class and --class-grid need a class-conditional run (class_conditional=true) "
                         "or classifier guidance")
    return None, None
