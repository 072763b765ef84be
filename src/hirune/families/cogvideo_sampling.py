"""Sampling and scoring cogvideo runs: key frames drawn token by token
(`sampling.autoregressive`, the video model seen as one long image: `FramesAsImage`), then
recursive interpolation by a second run, then the tokenizer's decoder per frame.

    keys = load("runs/cogvideo-moving-mnist5k"); mids = load("runs/cogvideo-interp-moving-mnist5k")
    out, labels = keys.generate(8, label=7, motion="moving left", gap=4)               # (8, 1, 5, 32, 32)
    out, labels = keys.generate(8, label=7, motion="moving left", gap=4, interpolator=mids)   # 17 frames
    out, _ = mids.generate(8, clips=x, gap=2, prompts=[...])     # x (8, 1, T, 32, 32) at gap 2 -> gap 1

Recursive interpolation (CogVideo sec. 3.1): each neighbouring pair (a, b) of a clip at gap g
is primed as [caption | rate(g / 2) | a, b] and the middle frame m drawn; the clip becomes
a_0 m_0 a_1 m_1 ... at gap g / 2, and again until the gap is `until` (1: every frame).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.video_captions import clip_prompts
from ..sampling import SampleOutput
from ..sampling.autoregressive import sample_image_tokens
from .base import check_sample_count, sample_chunks
from .dalle_sampling import token_options

CHUNK = 64  # clips (or interpolation pairs) drawn at once: the k-th chunk seeded seed + k
GAPS = (1, 2, 4)  # the frame gaps a frame-rate token can say (token k: GAPS[k])


def check_gap(gap, valid: tuple[int, ...] = GAPS) -> int:
    """A gap between frames: one a frame-rate token says."""
    if isinstance(gap, bool) or gap not in valid:
        raise ValueError(f"gap={gap!r} is not valid; valid: {list(valid)} (frames between neighbouring frames)")
    return int(gap)


def _captions(run, n, prompts, prompt, label, motion) -> tuple[Tensor, Tensor | None, list | None]:
    given = [k for k, v in (("prompts", prompts), ("prompt", prompt)) if v is not None]
    if len(given) > 1 or (given and (label is not None or motion is not None)):
        raise ValueError(f"give one of prompts, prompt, label / motion; got {given + ['label / motion']}")
    labels = motions = None
    if prompt is not None:
        prompts = [prompt] * n
    elif prompts is None:
        prompts, labels, motions = clip_prompts(n, label, motion)
    check_sample_count(run.data, len(prompts))
    return run.text_tokens(prompts), labels, motions


def _draw(model, text: Tensor, length: int, prime: Tensor | None, seed: int, options: dict, null) -> Tensor:
    """Codes (B, length) from `model` (the protocol of sample_image_tokens), CHUNK rows at a time."""
    out = []
    for rows, chunk_seed in sample_chunks(len(text), seed, CHUNK):
        g = torch.Generator(device=text.device).manual_seed(chunk_seed)
        out.append(sample_image_tokens(model, text[rows], length, prime=None if prime is None else prime[rows],
                                       null_text=null, generator=g, **options))
    return torch.cat(out)


def _options(run, temperature, top_k, top_p, scale, use_cache) -> dict:
    top_k, top_p = token_options(run, temperature, top_k, top_p, scale)
    return dict(temperature=temperature, top_k=top_k, top_p=top_p, scale=scale, use_cache=use_cache)


def generate(run, n: int, sampler=None, steps=None, spacing=None, seed: int = 0, *, prompts: list[str] | None = None,
             prompt: str | None = None, label: int | None = None, motion: str | None = None, gap: int | None = None,
             clips: Tensor | None = None, interpolator=None, until: int = 1, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, scale: float = 1.0, use_cache: bool = True,
             progress: bool = False, denoiser=None, guided_labels: bool = False, trajectory: bool = False):
    """Clips (n, 1, T, 32, 32) in [-1, 1] and the labels their prompts name (or None).

    A keyframes run draws K frames at `gap` (default the largest of GAPS), then, with
    `interpolator` (a loaded cogvideo run of stage interpolate over the same tokenizers),
    halves the gap until `until`.  An interpolation run takes known frames `clips` (n, 1, T,
    32, 32) at `gap` and halves it once (or until `until`).  Prompts: `prompts`, all
    `prompt`, or the digits and motions in turn (all `label` / `motion`).  temperature,
    top_k, top_p, scale (classifier-free guidance on the logits) as in `sampling.autoregressive`."""
    if sampler is not None or steps is not None or spacing is not None or denoiser is not None:
        raise ValueError("a cogvideo run draws tokens one by one: sampler, steps, spacing and denoisers do not apply "
                         "(use temperature, top_k, top_p, scale)")
    if trajectory or guided_labels:
        raise ValueError("a cogvideo run has no trajectory and no classifier guidance")
    options = _options(run, temperature, top_k, top_p, scale, use_cache)
    null = run.text_tokens([""]) if scale != 1.0 else None
    n = len(prompts) if prompts is not None else n
    text, labels, _ = _captions(run, n, prompts, prompt, label, motion)
    if run.config.stage == "interpolate":
        if clips is None or interpolator is not None:
            raise ValueError("an interpolation run fills in known frames: give clips= (n, 1, T, 32, 32) and gap=, "
                             "no interpolator")
        codes = encode_clips(run, clips, n)
        gap = check_gap(gap, tuple(2 * g for g in GAPS))
        interpolator, known = run, codes
    else:
        if clips is not None:
            raise ValueError("clips= is for an interpolation run; a keyframes run draws its frames from the prompts")
        gap = check_gap(max(GAPS) if gap is None else gap)
        F, N = run.config.frames, run.grid[0] * run.grid[1]
        bound = run.model.bound(GAPS.index(gap), run.times)
        known = _draw(bound, text, F * N, None, seed, options, null).view(n, F, N)
    if interpolator is not None:
        check_interpolator(run, interpolator)
        check_gap(until)
        while gap > until:
            known = interpolate_codes(interpolator, known, gap, text, seed, options, null)
            gap //= 2
    return SampleOutput(decode_clips(run, known), known.shape[1] * known.shape[2]), labels


def interpolate_codes(run, codes: Tensor, gap: int, text: Tensor, seed: int, options: dict, null) -> Tensor:
    """One halving: clips' codes (n, F, N) at `gap` -> (n, 2F - 1, N) at gap / 2, every middle
    frame drawn by the interpolation run from its pair [a, b] under the clip's caption."""
    half = check_gap(gap // 2) if gap % 2 == 0 else check_gap(gap / 2)
    n, F, N = codes.shape
    pairs = torch.cat([codes[:, :-1], codes[:, 1:]], 2).reshape(n * (F - 1), 2 * N)
    bound = run.model.bound(GAPS.index(half), run.times)
    mids = _draw(bound, text.repeat_interleave(F - 1, 0), 3 * N, pairs, seed, options, null)[:, 2 * N:]
    out = torch.empty(n, 2 * F - 1, N, dtype=codes.dtype, device=codes.device)
    out[:, 0::2], out[:, 1::2] = codes, mids.view(n, F - 1, N)
    return out


def check_interpolator(run, interpolator) -> None:
    """An interpolator: a cogvideo run of stage interpolate reading the same text and image tokens."""
    if getattr(interpolator, "name", None) != "cogvideo" or interpolator.config.stage != "interpolate":
        raise ValueError("interpolator must be a loaded cogvideo run of stage interpolate (e.g. `hirune train "
                         "cogvideo-interp-moving-mnist5k`)")
    a, b = run.image_tokenizer.model.state_dict(), interpolator.image_tokenizer.model.state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)
    if not same or run.model.config.text_vocab != interpolator.model.config.text_vocab:
        raise ValueError("the interpolator reads other image or text tokens than this run (another image_model's "
                         "tokenizers); valid: an interpolation run started from the same image tokenizer")


def encode_clips(run, clips: Tensor, n: int) -> Tensor:
    """Clips (n, 1, T, H, W) -> their frames' codes (n, T, N)."""
    clips = torch.as_tensor(clips)
    want = (run.data.shape[0], *run.data.shape[2:])
    if clips.dim() != 5 or len(clips) != n or (clips.shape[1], *clips.shape[3:]) != want or clips.shape[2] < 2:
        raise ValueError(f"clips must be (n={n}, {want[0]}, T >= 2, {want[1]}, {want[2]}), got {tuple(clips.shape)}")
    b, c, t, h, w = clips.shape
    frames = clips.float().transpose(1, 2).reshape(b * t, c, h, w)
    return run.image_tokenizer.encode(frames).view(b, t, -1).to(run.device)


def decode_clips(run, codes: Tensor) -> Tensor:
    """Codes (n, T, N) -> clips (n, 1, T, H, W) in [-1, 1]."""
    n, t, _ = codes.shape
    frames = run.image_tokenizer.decode(codes.reshape(n * t, *run.grid))
    return frames.view(n, t, *frames.shape[1:]).transpose(1, 2)


def preview_interpolation(run, n: int) -> Tensor:
    """n real test clips' (a, m, b) at gap 2 -> the clips (n, 1, 3, H, W) a, drawn m, b."""
    from ..data import load_dataset

    test = load_dataset(run.data.name, "test")
    pick = torch.linspace(0, len(test) - 1, n).round().long()
    known = test.data[pick][:, :, [0, 4]]
    from ..data.video_captions import VideoCaptioner

    prompts = VideoCaptioner(test).captions(pick, torch.zeros(n, dtype=torch.long))
    out, _ = generate(run, n, seed=run.cfg.seed, prompts=prompts, clips=known, gap=4, until=2)
    return out.x


def evaluate(run, n: int | None = None, *, sampler=None, steps=None, seed: int = 0, denoiser=None,
             gap: int | None = None, interpolator=None, scale: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, **options) -> dict:
    """A keyframes run: n clips, the prompts naming the digits and motions in turn, at `gap`
    (interpolated to gap 1 with `interpolator`), scored by `evaluation.video.video_report`
    (frame accuracy, direction, consistency, per-frame Frechet distance; the "real_" keys are
    real clips of as many frames at gap 1).  An interpolation run: n real test clips at `gap`
    (default 2) filled in to gap 1, scored the same, with the PSNR of the drawn frames to
    the real ones."""
    from ..evaluation.video import video_report

    given = {**options, "sampler": sampler, "steps": steps, "denoiser": denoiser}
    asked = sorted(k for k, v in given.items() if v is not None and v is not False and v != 0)
    if asked:
        raise ValueError(f"options {asked} are not valid for a cogvideo run; valid: n, seed, gap, interpolator, scale, "
                         "top_k, top_p")
    n = check_sample_count(run.data, n or 100)
    sampling = dict(seed=seed, scale=scale, top_k=top_k, top_p=top_p)
    metrics = {"step": run.step, "dataset": run.data.name, "stage": run.config.stage, "scale": scale}
    if run.config.stage == "interpolate":
        return {**metrics, **evaluate_interpolation(run, n, gap or 2, sampling)}
    prompts, labels, motions = clip_prompts(n)
    out, _ = generate(run, n, prompts=prompts, gap=gap, interpolator=interpolator, **sampling)
    metrics.update(gap=gap or max(GAPS), frames=out.x.shape[2], nfe=out.nfe)
    metrics.update(video_report(out.x, labels, motions))
    return metrics


def evaluate_interpolation(run, n: int, gap: int, sampling: dict) -> dict:
    from ..data import load_dataset
    from ..data.video_captions import VideoCaptioner
    from ..evaluation.video import video_report
    from ..metrics.distances import psnr

    test = load_dataset(run.data.name, "test")
    pick = torch.linspace(0, len(test) - 1, n).round().long()
    real = test.data[pick]
    prompts = VideoCaptioner(test).captions(pick, torch.zeros(n, dtype=torch.long))
    out, _ = generate(run, n, prompts=prompts, clips=real[:, :, ::gap], gap=gap, **sampling)
    drawn = torch.ones(real.shape[2], dtype=torch.bool)
    drawn[::gap] = False
    motions = test.attributes["direction"][pick]
    return {"gap": gap, "frames": out.x.shape[2], "nfe": out.nfe,
            "psnr_drawn_frames": float(psnr(out.x[:, :, drawn], real[:, :, drawn]).mean()),
            **video_report(out.x, test.labels[pick], motions)}
