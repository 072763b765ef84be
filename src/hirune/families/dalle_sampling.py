"""Sampling a trained dalle run: captions (or token ids) -> image codes drawn one by one
(`sampling.autoregressive`) -> images through the tokenizer run's `decode_codes`.

    run = load("runs/dalle-mnist5k")
    out, labels = run.generate(16, prompt="a thick handwritten seven", top_k=32, scale=3.0)
    out, _ = run.generate(8, prime=x, rows=3)          # complete x (1 or 8 images) from its top 3 code rows
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..sampling import SampleOutput
from ..sampling.autoregressive import check_sampling_options, sample_image_tokens
from .base import check_sample_count, sample_chunks
from .dalle_tokens import check_text_ids


def generate(run, n: int, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
             seed: int = 0, *, prompts: list[str] | None = None, prompt: str | None = None,
             labels: Tensor | None = None, label: int | None = None, per_class: bool = False,
             text_ids: Tensor | None = None, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, scale: float = 1.0, prime: Tensor | None = None, rows: int = 0,
             use_cache: bool = True, progress: bool = True, denoiser=None, guided_labels: bool = False,
             trajectory: bool = False):
    """n images of a dalle run and the labels their captions name (or None); returns
    (SampleOutput(x, nfe = tokens drawn per image), labels).

    The captions: `prompts` (one each), or all `prompt`, or token ids `text_ids` (B, L)
    given directly, or "a handwritten <digit>" for class labels (`labels`; all `label`; a
    class grid with per_class; else the digits in turn); with `prime` and none of these,
    the null caption.  prime: images (1 or n, C, H, W) whose first `rows` rows of codes are
    kept and the rest drawn.  temperature, top_k, top_p (None: the run's), scale
    (classifier-free guidance, 1 = off) as in `sampling.autoregressive`; use_cache=False
    recomputes every prefix.  More than SAMPLE_CHUNK images are drawn in chunks, the k-th
    with seed + k."""
    if sampler is not None or steps is not None or spacing is not None or denoiser is not None:
        raise ValueError("a dalle run draws image tokens one by one: sampler, steps, spacing and guided "
                         "denoisers do not apply (use temperature, top_k, top_p, scale)")
    if trajectory or guided_labels:
        raise ValueError("a dalle run has no trajectory and no classifier guidance")
    from tqdm.auto import tqdm

    top_k, top_p = token_options(run, temperature, top_k, top_p, scale)
    text, labels = caption_tokens(run, n, prompts, prompt, labels, label, per_class, text_ids, prime is not None)
    n = len(text)
    primed = prime_codes(run, prime, rows, n)
    h, w = run.grid
    null = run.text_tokens([""]) if scale != 1.0 else None
    outs = []
    for chunk, chunk_seed in sample_chunks(n, seed):
        generator = torch.Generator(device=run.device).manual_seed(chunk_seed)
        with tqdm(total=h * w - (primed.shape[1] if primed is not None else 0), desc="tokens", unit="token",
                  leave=False, disable=not progress) as bar:
            codes = sample_image_tokens(run.model, text[chunk].to(run.device), h * w,
                                        prime=primed[chunk] if primed is not None else None,
                                        temperature=temperature, top_k=top_k, top_p=top_p, scale=scale,
                                        null_text=null, use_cache=use_cache, generator=generator,
                                        callback=lambda k: bar.update(1))
        outs.append(run.image_tokenizer.decode(codes.view(-1, h, w)))
    return SampleOutput(torch.cat(outs), h * w - (rows * w if primed is not None else 0)), labels


def token_options(run, temperature: float, top_k: int | None, top_p: float | None, scale: float) -> tuple[int, float]:
    """top_k and top_p, the run's own (its settings) where not given, checked with the
    temperature and the guidance scale; guidance (scale != 1) needs caption dropout."""
    top_k = run.config.top_k if top_k is None else top_k
    top_p = run.config.top_p if top_p is None else top_p
    check_sampling_options(temperature, top_k, top_p, scale)
    if scale != 1.0 and run.config.p_uncond <= 0:
        raise ValueError("classifier-free guidance (scale != 1) needs a run trained with caption dropout "
                         "(p_uncond > 0): its null caption was never trained")
    return top_k, top_p


def caption_tokens(run, n: int, prompts, prompt, labels, label, per_class: bool, text_ids,
                   primed: bool) -> tuple[Tensor, Tensor | None]:
    """The captions' token ids (n', text_len) and the labels they name (or None), from one of
    prompts / prompt / text_ids / labels / label / per_class (see `generate`)."""
    from .diffusion_sampling import check_labels, class_labels

    given = [name for name, v in (("prompts", prompts), ("prompt", prompt), ("text_ids", text_ids),
                                  ("labels", labels)) if v is not None]
    if len(given) > 1 or (given and (label is not None or per_class)):
        raise ValueError(f"give one of prompts, prompt, text_ids, labels, label / per_class; got {given}")
    count = next((len(v) for v in (prompts, text_ids, labels) if v is not None), n)
    n = check_sample_count(run.data, count)
    if text_ids is not None:
        text = check_text_ids(text_ids, run.model.config.text_vocab)
        if text.dim() != 2 or text.shape[1] != run.config.text_len:
            raise ValueError(f"text_ids must be (B, text_len={run.config.text_len}), got {tuple(text.shape)}")
        return text.to(run.device), None
    if prompt is not None:
        prompts = [prompt] * n
    elif prompts is None and primed and labels is None and label is None and not per_class:
        prompts = [""] * n                     # an image completed with no caption
    elif prompts is None:
        if labels is not None:
            check_labels(run, labels)
        else:
            labels = class_labels(run, n, label, per_class)
        prompts = [label_caption(run.data.name, int(k)) for k in labels]
    return run.text_tokens(prompts), labels


def prime_codes(run, prime: Tensor | None, rows: int, n: int) -> Tensor | None:
    """The codes of the first `rows` rows of the images `prime` (1 or n, C, H, W), (n, rows w)."""
    h, w = run.grid
    if prime is None:
        if rows:
            raise ValueError("rows (--rows) goes with an image to prime (--prime IMAGE)")
        return None
    if not isinstance(rows, int) or not 1 <= rows <= h:
        raise ValueError(f"rows={rows} is past the code grid: priming keeps 1..{h} of its {h} rows "
                         f"({h} x {w} codes per image)")
    prime = torch.as_tensor(prime)
    if prime.dim() != 4 or tuple(prime.shape[1:]) != tuple(run.data.shape) or len(prime) not in (1, n):
        raise ValueError(f"prime must be 1 or n={n} images of shape {tuple(run.data.shape)}, got "
                         f"{tuple(prime.shape)}")
    codes = run.image_tokenizer.encode(prime.float())[:, :rows].flatten(1)
    return codes.expand(n, -1).to(run.device) if len(codes) == 1 else codes.to(run.device)


def label_caption(dataset: str, label: int) -> str:
    """The default caption of a class label: "a handwritten seven"; on a dataset captioned as
    clips, a still digit's: "a seven"."""
    from ..data.captions import caption
    from ..data.video_captions import captioned_as_clips, video_caption

    return video_caption(label, None) if captioned_as_clips(dataset) else caption(label)
