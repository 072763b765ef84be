"""unCLIP (Ramesh et al. 2022, "DALL-E 2", secs. 2 and 5.1): text -> CLIP image embedding (the
prior) -> image (a decoder conditioned on CLIP image embeddings).  The paper's argument for the
prior: CLIP's text embedding of a caption is not an image embedding -- it lies elsewhere on the
sphere -- so a decoder trained on image embeddings draws worse images from it; the prior samples
an image embedding given the caption, which the decoder knows how to draw.  And because the
decoder reads only CLIP's embedding of an image, decoding one embedding with other seeds gives
variations that keep what CLIP keeps (the class and style), and a slerp between two images'
embeddings an interpolation (secs. 3.1-3.2).

Measured: a clip run, an unCLIP prior (`families.prior`) and a decoder (a v-prediction UNet with
clip=RUN, `families.embedding`) on it, all trained at the budget with the library's presets
(clip-digits, prior-mnist5k's recipe on the digits and vpred-digits with clip=RUN at the tiny
and small budgets; clip-mnist5k, prior-mnist5k and unclip-decoder-mnist5k at their preset steps
at the full one, the README's runs); then
  * the prior alone (`run.evaluate`): on test digits captioned in the training and in held-out
    phrasings, the mean cosine of its sampled embedding (best of 2, best of 1) to the digit's
    true CLIP image embedding, beside the caption's CLIP text embedding taken as the guess;
  * end to end (`inference.unclip.UnCLIP`), with the prior (its samples, best of 2) and without
    it (the caption's CLIP text embedding decoded directly), at each decoder guidance scale:
    images of "a handwritten <digit>" (digits in turn) against the test split (the shipped
    evaluator's Frechet distance, the share drawn as the digit named), and images per caption
    phrasing, training and held-out (`evaluation.text`);
  * variations: test digits spread over the split, each decoded from its own embedding with
    other seeds: the share the evaluator gives the source's class, the RMS pixel distance
    between two variations of one source and from a variation to its source;
  * the figure: the digit named with and without the prior, the variations, and interpolation
    strips (test digit a | the slerp of the two embeddings from exact-DDIM-inverted noise | b).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .bases import TINY_UNET, train_base


@dataclass(frozen=True)
class Size:
    """What a budget trains and measures."""
    dataset: str
    presets: tuple[str, str, str]           # clip, prior, decoder presets (the dataset set on each)
    steps: tuple[int, int, int]             # their training steps
    overrides: tuple[dict, dict, dict]      # their settings beyond the preset's
    n: int                                  # images of "a handwritten <digit>" against the test split, per row
    text_n: int                             # images per caption phrasing, per row
    scales: tuple[float, ...]               # decoder guidance scales
    decoder_steps: int                      # the decoder's sampler steps
    prior_n: int                            # test digits the prior's embeddings are compared with
    prior_scales: tuple[float, ...]         # the prior's guidance scales (end to end: the first)
    sources: int                            # test digits varied
    per: int                                # variations of each
    pairs: int                              # interpolation strips
    frames: int                             # images in a strip between its two ends
    ddim_steps: int                         # DDIM steps of the strips (inversion and decoding)


_TINY_CLIP = {"batch_size": 32, "model_config": {"channels": 8, "embed_dim": 16, "text_dim": 32, "text_depth": 1}}
_TINY_PRIOR = {"batch_size": 32, "sample_steps": 4, "model_config": {"width": 32, "depth": 1, "heads": 2}}
_DIGITS = ("clip-digits", "prior-mnist5k", "vpred-digits")
SIZES = {
    "tiny": Size("digits", _DIGITS, (3, 3, 3), (_TINY_CLIP, _TINY_PRIOR, {"batch_size": 32, "model_config": TINY_UNET}),
                 n=10, text_n=3, scales=(1.0, 3.0), decoder_steps=2, prior_n=10, prior_scales=(1.0, 2.0), sources=2,
                 per=2, pairs=2, frames=3, ddim_steps=2),
    "small": Size("digits", _DIGITS, (500, 400, 800), ({}, {"sample_steps": 32}, {}), n=300, text_n=30,
                  scales=(1.0, 3.0), decoder_steps=25, prior_n=300, prior_scales=(1.0, 2.0), sources=20, per=4,
                  pairs=4, frames=6, ddim_steps=25),
    # the README's runs: clip-mnist5k, prior-mnist5k, unclip-decoder-mnist5k at their preset steps
    "full": Size("mnist5k", ("clip-mnist5k", "prior-mnist5k", "unclip-decoder-mnist5k"), (500, 800, 1000),
                 ({}, {}, {}), n=300, text_n=40, scales=(1.0, 3.0), decoder_steps=25, prior_n=500,
                 prior_scales=(1.0, 2.0, 4.0), sources=40, per=4, pairs=4, frames=8, ddim_steps=50),
}


def train_runs(size: Size, folder: Path):
    """The clip run, then the prior and the decoder on it, trained into `folder`: (prior, decoder)
    loaded, and the seconds each took."""
    from ...training import load

    seconds, runs = {}, {}
    for role, preset, steps, overrides in zip(("clip", "prior", "decoder"), size.presets, size.steps, size.overrides):
        start = time.perf_counter()
        on_clip = {} if role == "clip" else {"clip": str(folder / "clip")}
        runs[role] = train_base(preset, folder / role, steps, dataset=size.dataset, **on_clip, **overrides)
        seconds[role] = time.perf_counter() - start
    return load(runs["prior"]), load(runs["decoder"]), seconds


def text_to_image(pipe, size: Size, scale: float, use_prior: bool) -> dict:
    """One row end to end: size.n images of "a handwritten <digit>" against the test split, and
    size.text_n per caption phrasing; with the prior (best of its run's best_of, at the first prior
    scale) or CLIP's text embedding decoded directly."""
    from ...data.captions import caption
    from ...evaluation.text import text_accuracy
    from ...metrics.evaluator import evaluate_images

    def draw(prompts, seed):
        return pipe.text_to_image(prompts, prior_scale=size.prior_scales[0], decoder_scale=scale,
                                  use_prior=use_prior, steps=size.decoder_steps, seed=seed)

    labels = torch.arange(size.n) % 10
    quality = evaluate_images(size.dataset, draw([caption(int(k)) for k in labels], 0), labels)
    return {"prior": use_prior, "scale": scale, **quality,
            **text_accuracy(lambda prompts, k: draw(prompts, 1000 + k), size.dataset, size.text_n)}


def variations(pipe, size: Size, scale: float) -> dict:
    """size.per variations of size.sources test digits: the source's class kept (the evaluator),
    the RMS pixel distance between variations of one source and from a variation to its source;
    `grid`: each source followed by its variations."""
    from ...data import load_dataset
    from ...families.base import spread
    from ...metrics.evaluator import features_and_logits, load_evaluator

    test = load_dataset(size.dataset, "test")
    net = load_evaluator(size.dataset)
    kept, between, to_source, grid = [], [], [], []
    pairs = torch.triu_indices(size.per, size.per, 1)
    for i, k in enumerate(spread(size.sources, len(test.data)).tolist()):
        x = test.data[k:k + 1]
        v = pipe.variations(x, size.per, seed=i, decoder_scale=scale, steps=size.decoder_steps).cpu()
        kept.append(features_and_logits(net, v)[1].argmax(1) == test.labels[k])
        rms = torch.cdist(v.flatten(1).double(), v.flatten(1).double()) / v[0].numel() ** 0.5
        between.append(rms[pairs[0], pairs[1]].mean())
        to_source.append((v - x).flatten(1).double().square().mean(1).sqrt().mean())
        grid += [x, v]
    return {"scale": scale, "sources": len(kept), "per_source": size.per,
            "source_class_kept": float(torch.cat(kept).double().mean()),
            "rms_between_variations": float(torch.stack(between).mean()),
            "rms_variation_to_source": float(torch.stack(to_source).mean()), "grid": torch.cat(grid)}


def strips(pipe, size: Size) -> torch.Tensor:
    """size.pairs rows (test digit a, size.frames interpolation frames, test digit b), a and b far
    apart in the split (other digits on mnist5k): (pairs * (frames + 2), C, H, W)."""
    from ...data import load_dataset
    from ...families.base import spread

    test = load_dataset(size.dataset, "test")
    idx = spread(2 * size.pairs, len(test.data)).tolist()
    rows = []
    for a, b in zip(idx[:size.pairs], idx[::-1][:size.pairs]):
        xa, xb = test.data[a:a + 1], test.data[b:b + 1]
        rows += [xa, pipe.interpolate(xa, xb, size.frames, ddim_steps=size.ddim_steps).cpu(), xb]
    return torch.cat(rows)


def _rows(size: Size, prior: list[dict], ends: list[dict], real: float) -> list[list]:
    """The table: the embedding decoded (prior best of 2 / CLIP text embedding) x decoder scale with
    its cosine to the true image embeddings, then the prior's other guesses, then real vs real."""
    first = prior[0]

    def cos(guess, at=first):
        return [at[f"train/{guess}/cosine"], at[f"held_out/{guess}/cosine"]]
    rows = []
    for r in ends:
        guess = "best_of_2" if r["prior"] else "text_embedding"
        name = "prior, best of 2" if r["prior"] else "CLIP text embedding (no prior)"
        rows.append([name, r["scale"], *cos(guess), r["frechet_distance"], r["class_accuracy"],
                     r["train_phrasing_accuracy"], r["held_out_phrasing_accuracy"]])
    rows.append(["prior, best of 1", "-", *cos("best_of_1"), "-", "-", "-", "-"])
    for at in prior[1:]:
        for guess in ("best_of_2", "best_of_1"):
            rows.append([f"prior, {guess.replace('_', ' ')}, prior scale {at['scale']:g}", "-", *cos(guess, at),
                         "-", "-", "-", "-"])
    rows.append(["real vs real", "-", "-", "-", real, "-", "-", "-"])
    return rows


def _notes(size: Size, prior: list[dict], ends: list[dict], varied: dict, seconds: dict, real: float) -> list[str]:
    first = prior[0]
    by = {(r["prior"], r["scale"]): r for r in ends}
    lo, hi = size.scales[0], size.scales[-1]
    with_prior = [by[True, s]["held_out_phrasing_accuracy"] - by[False, s]["held_out_phrasing_accuracy"]
                  for s in size.scales]
    closer = first["train/best_of_2/cosine"] > first["train/text_embedding/cosine"]
    helps = all(d > 0 for d in with_prior)
    lower_fd = all(by[True, s]["frechet_distance"] < by[False, s]["frechet_distance"] for s in size.scales)
    return [
        f"{size.presets[0]} {size.steps[0]} steps, {size.presets[1]} {size.steps[1]} and {size.presets[2]} "
        f"{size.steps[2]} on it (dataset {size.dataset}): {seconds['clip']:.0f} s, {seconds['prior']:.0f} s and "
        f"{seconds['decoder']:.0f} s here; cosine columns: the embedding against {first['examples']} test digits' "
        f"true CLIP image embeddings (prior scale {size.prior_scales[0]:g}); the rest: {size.n} images of 'a "
        f"handwritten <digit>' (real vs real {real:.3g}) and {size.text_n} per phrasing, decoder {size.decoder_steps} "
        "steps",
        f"the prior's embedding is {'closer to' if closer else 'no closer to'} the image's than the text embedding "
        f"is: cosine {first['train/best_of_2/cosine']:.3f} against {first['train/text_embedding/cosine']:.3f} "
        f"(held-out phrasings {first['held_out/best_of_2/cosine']:.3f} against "
        f"{first['held_out/text_embedding/cosine']:.3f}); the true embeddings' zero-shot share "
        f"{first['true_image_zero_shot']:.0%}, the prior's {first['train/best_of_2/zero_shot']:.0%}, the text "
        f"embedding's {first['train/text_embedding/zero_shot']:.0%}",
        f"end to end, the digit named with the prior {by[True, lo]['class_accuracy']:.0%} at s = {lo:g} and "
        f"{by[True, hi]['class_accuracy']:.0%} at s = {hi:g}, without it {by[False, lo]['class_accuracy']:.0%} and "
        f"{by[False, hi]['class_accuracy']:.0%}; held-out phrasings: the prior "
        + ("adds " + " and ".join(f"{d:+.0%}" for d in with_prior) if helps else
           "does not help at every scale here (" + ", ".join(f"{d:+.0%}" for d in with_prior) + ")")
        + "; Frechet distance " + ("lower with the prior at every scale" if lower_fd else
                                   "not lower with the prior at every scale at this budget"),
        f"variations (s = {varied['scale']:g}, {varied['sources']} test digits x {varied['per_source']}): the "
        f"source's class kept in {varied['source_class_kept']:.0%}; RMS pixel distance between variations "
        f"{varied['rms_between_variations']:.3f}, to the source {varied['rms_variation_to_source']:.3f} (pixels in "
        "[-1, 1])",
        f"the figure: the digit named against the decoder scale; {varied['sources']} test digits, each followed by "
        f"its variations; {size.pairs} interpolation strips (a | {size.frames} frames | b, DDIM {size.ddim_steps} "
        "steps from the inverted noise)",
    ]


def unclip_note(budget: str) -> Report:
    from ...inference.unclip import UnCLIP

    size = SIZES[budget]
    with tempfile.TemporaryDirectory() as tmp:
        prior_run, decoder, seconds = train_runs(size, Path(tmp))
        pipe = UnCLIP(prior_run, decoder)
        prior = [prior_run.evaluate(size.prior_n, scale=s, seed=0) for s in size.prior_scales]
        ends = [text_to_image(pipe, size, scale, use_prior) for use_prior in (True, False) for scale in size.scales]
        varied = variations(pipe, size, size.scales[-1])
        strip = strips(pipe, size)
    real = ends[0]["frechet_real_vs_real"]
    grid = varied.pop("grid")
    data = {"budget": budget, "size": asdict(size), "seconds": seconds,
            "decoder_parameters": sum(p.numel() for p in decoder.model.parameters()),
            "prior_parameters": sum(p.numel() for p in prior_run.model.parameters()),
            "prior": prior, "text_to_image": ends, "variations": varied}

    def plot(path):
        from ...viz import grid_picture

        plt = pyplot()
        fig, (ax, var, pic) = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw={"width_ratios": [1.1, 0.8, 1.3]})
        for use_prior, label in ((True, "prior"), (False, "text embedding")):
            for key, style, words in (("train_phrasing_accuracy", "-", "training"),
                                      ("held_out_phrasing_accuracy", "--", "held-out")):
                ax.plot(size.scales, [r[key] for r in ends if r["prior"] == use_prior], style, marker="o",
                        color="C0" if use_prior else "C1", label=f"{label}, {words} phrasings")
        ax.set(xlabel="decoder guidance scale", ylabel="share drawn as the digit named", ylim=(0, 1))
        ax.legend(fontsize=7)
        var.imshow(grid_picture(grid, size.per + 1), cmap="gray")
        var.set_title("source | variations", fontsize=9)
        pic.imshow(grid_picture(strip, size.frames + 2), cmap="gray")
        pic.set_title("a | interpolation | b", fontsize=9)
        var.axis("off")
        pic.axis("off")
        save(fig, path)
    return Report("unclip", f"unCLIP on {size.dataset}: CLIP -> prior -> decoder against CLIP's text embedding "
                            "decoded directly",
                  ["image embedding", "decoder scale", "cosine, training phrasings", "cosine, held-out phrasings",
                   "Frechet distance", "digit named", "training phrasings", "held-out phrasings"],
                  _rows(size, prior, ends, real), _notes(size, prior, ends, varied, seconds, real), data, plot)
