"""The prior family: unCLIP's diffusion prior (Ramesh et al. 2022, sec. 2.1), a diffusion
model over CLIP image embeddings given the caption.

    run = load("runs/prior-mnist5k")
    z = run.generate_embeddings(["a thick handwritten seven"], scale=2.0)   (1, D) unit vectors
    run.clip                                                              the frozen CLIP run
    run.evaluate(500)      cosine to the true test image embeddings; zero-shot share

The data the diffusion runs on are the training images' CLIP image embeddings z_i (N, D),
computed once by the frozen CLIP run named by `clip` (reference "clip") and standardised
per component, (z - mean) / std over the training set (mean and std saved with every
checkpoint, so a loaded run maps samples back).  Each step draws a caption phrasing per
example (`data.captions`), drops it to "" with p_uncond (the null condition of
classifier-free guidance: the empty caption's CLIP token encodings and text embedding),
and regresses the network's prediction (`prediction`: x0 as in the paper, or eps / v) on
the forward process (ddpm, cosine schedule by default).  The condition is CLIP's
per-token text encodings, their mask, and the CLIP text embedding
(`models.prior.PriorTransformer`).

Sampling draws `best_of` candidates per caption with any sampler (under CFG at `scale`),
maps them back from the standardised space, L2-normalises them and keeps the one of
highest cosine similarity to the caption's CLIP text embedding (the paper's "sample two
z_i and pick the one with the higher dot product with z_t").  No x0 clipping: the
embeddings are not bounded to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import objectives as O
from ..process import Denoiser, make_process
from ..process.denoiser import check_prediction_suits
from .base import (Batch, Context, Draw, Family, check_eval_counts, checked_process, refuse_extras, register,
                   sample_chunks, spread)
from .settings import Range, check_choices

PREDICTIONS = ("x0", "eps", "v")
CLASS_PROMPT = "an image of a {name}"   # the zero-shot prompt of the evaluation


@dataclass(frozen=True)
class PriorFamilyConfig:
    clip: str = ""                     # a trained clip run's directory (required)
    process: str = "ddpm"
    process_config: dict = field(default_factory=lambda: {"schedule": "cosine"})
    prediction: str = "x0"             # x0 (the paper) | eps | v
    p_uncond: float = 0.1              # caption dropped to "" for classifier-free guidance
    best_of: int = 2                   # candidates per caption, the closest to its text embedding kept
    sampler: str = "ddim"
    sample_steps: int = 64


@dataclass
class PriorDraw(Draw):
    """drop (B,) bool: caption dropped; template (B,): its phrasing; t (B,); noise (B, D)."""

    drop: Tensor | None = None
    template: Tensor | None = None
    t: Tensor | None = None
    noise: Tensor | None = None


def pick_best(candidates: Tensor, text_emb: Tensor) -> Tensor:
    """candidates (N, k, D) unit vectors, text_emb (N, D) unit -> (N, D): per row the
    candidate of highest cosine similarity (dot product) with its text embedding."""
    sims = torch.einsum("nkd,nd->nk", candidates, text_emb)
    pick = sims.argmax(1)
    return candidates[torch.arange(len(candidates)), pick]


def check_clip_reference(clip, dataset: str) -> None:
    """The reference must be a clip run trained on the prior's dataset."""
    if getattr(clip, "name", None) != "clip":
        raise ValueError(f"clip={clip.run_dir if hasattr(clip, 'run_dir') else clip!s} is not valid; valid: a "
                         f"trained clip run (family 'clip', e.g. runs/clip-mnist5k), not a "
                         f"{getattr(clip, 'name', type(clip).__name__)} run")
    if clip.data.name != dataset:
        raise ValueError(f"dataset={dataset!r} is not valid for this prior; valid: {clip.data.name!r}, the "
                         f"dataset its CLIP run was trained on")


@register
class Prior(Family):
    name = "prior"
    Config = PriorFamilyConfig
    networks = ("prior",)
    has_previews = False
    guided_by_scale = True  # classifier-free guidance at `scale` inside generate_embeddings / evaluate
    evaluates_test_examples = True
    resumable = ("best_of", "sampler", "sample_steps")
    ranges = {"p_uncond": Range(0, 1, high_open=True), "best_of": Range(1, integer=True),
              "sample_steps": Range(1, integer=True)}

    @classmethod
    def check(cls, cfg, config) -> None:
        from ..sampling import SAMPLERS

        super().check(cfg, config)
        if not config.clip:
            raise ValueError("clip='' is not valid; valid: a trained clip run's directory, e.g. "
                             "clip=runs/clip-mnist5k")
        check_choices(config, {"prediction": PREDICTIONS, "sampler": tuple(SAMPLERS)})
        check_prediction_suits(config.prediction, checked_process(config))

    @classmethod
    def reference_paths(cls, config, training: bool) -> dict[str, str]:
        return {"clip": config.clip}

    @classmethod
    def missing_reference(cls, role: str, path: str) -> str:
        return (f"clip run {path} does not exist; train one first, e.g. `hirune train clip-mnist5k`, then pass "
                "clip=runs/clip-mnist5k")

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        self.clip = self.references["clip"]
        check_clip_reference(self.clip, data.name)
        self.clip.model.to(self.device).eval().requires_grad_(False)
        self.clip.device = self.device
        self.process = make_process(config.process, **config.process_config)
        self.dim = self.clip.model.config.embed_dim
        self.sample_shape = (self.dim,)
        self.model = self._build(cfg.model, network_config or self._network_config())
        self.denoiser = Denoiser(self.model, self.process, config.prediction)  # no x0 clipping
        self.mean, self.std = torch.zeros(self.dim), torch.ones(self.dim)     # set by prepare / a checkpoint
        self.embeddings = self.captioner = None
        self._cache: dict[str, tuple[Tensor, Tensor, Tensor]] = {}

    def _network_config(self) -> dict:
        out = dict(self.cfg.model_config)
        out.update(dim=self.dim, text_width=self.clip.model.text_token_width, context_len=self.clip.text.max_len)
        out.setdefault("time_scale", 1000.0 / self.process.T if self.process.discrete else 1000.0)
        return out

    # --- the condition ----------------------------------------------------------------
    def condition(self, captions: list[str]) -> dict[str, Tensor]:
        """Captions -> the network's condition on the device: CLIP's per-token encodings
        `text_tokens` (B, M, W), `text_mask` (B, M) and text embedding `text_emb` (B, D);
        each distinct caption encoded once and kept."""
        new = sorted({c for c in captions if c not in self._cache})
        if new:
            tokens, mask = self.clip.embed_text_tokens(new)
            emb = self.clip.embed_text(new)
            self._cache.update({c: (tokens[i], mask[i], emb[i]) for i, c in enumerate(new)})
        rows = [self._cache[c] for c in captions]
        return {key: torch.stack([r[i] for r in rows]).to(self.device)
                for i, key in enumerate(("text_tokens", "text_mask", "text_emb"))}

    # --- the diffusion's space ------------------------------------------------------
    def standardise(self, z: Tensor) -> Tensor:
        return (z - self.mean.to(z)) / self.std.to(z)

    def unstandardise(self, x: Tensor) -> Tensor:
        return x * self.std.to(x) + self.mean.to(x)

    # --- training -------------------------------------------------------------------
    def prepare(self, data, context: Context) -> None:
        from ..data.captions import Captioner

        super().prepare(data, context)
        self.captioner = Captioner(data.data, data.labels)
        z = self.clip.embed_image(data.data)                               # (N, D) unit, once
        self.mean, self.std = z.mean(0), z.std(0).clamp_min(1e-6)
        self.embeddings = self.standardise(z)

    def training_data(self) -> tuple[Tensor, Tensor | None]:
        return self.embeddings, None

    def draw(self, n: int, generator: torch.Generator) -> PriorDraw:
        """Caption dropout, phrasings, times, noise."""
        from ..data.captions import TRAIN_TEMPLATES

        g, dev = generator, self.device
        d = PriorDraw()
        d.drop = torch.rand(n, generator=g, device=g.device).to(dev) < self.config.p_uncond
        d.template = torch.randint(len(TRAIN_TEMPLATES), (n,), generator=g, device=g.device).to(dev)
        d.t = O.sample_times(self.process, n, g, dev)
        d.noise = torch.randn((n, self.dim), generator=g, device=dev)
        return d

    def loss(self, forward: nn.Module, batch: Batch, draw: PriorDraw, step: int) -> O.Loss:
        cond = self.condition(self.captioner.captions(batch.idx, draw.template, draw.drop))
        return O.regression_loss(forward, self.process, batch.x, target=self.config.prediction, cond=cond,
                                 t=draw.t, noise=draw.noise)

    def checkpoint(self, ema):
        tensors, state = super().checkpoint(ema)
        state["embedding_stats"] = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        return tensors, state

    def restore(self, tensors: dict, state: dict) -> None:
        super().restore(tensors, state)
        self.restore_loaded(state)

    def restore_loaded(self, state: dict) -> None:
        stats = state.get("embedding_stats")
        if not stats:
            raise ValueError("this prior checkpoint holds no embedding statistics (state 'embedding_stats'); "
                             "re-save it with this version of hirune")
        self.mean, self.std = torch.tensor(stats["mean"]), torch.tensor(stats["std"])
        if self.embeddings is not None and self.train_data is not None:  # resumed: the same standardisation
            self.embeddings = self.standardise(self.clip.embed_image(self.train_data.data))

    # --- inference ------------------------------------------------------------------
    def guide(self, method: str = "none", scale: float = 1.0, *, classifier=None, rescale: float = 0.0,
              interval: tuple[float, float] | None = None):
        """The denoiser (none) or classifier-free guidance at `scale` (1 = conditional, 0 =
        unconditional; rescale and interval as `sampling.guidance`), the null condition
        the empty caption's CLIP encodings."""
        from ..sampling.guidance import ClassifierFreeGuidance

        if method not in ("none", "cfg") or classifier is not None:
            raise ValueError(f"guidance={method!r} is not valid for a prior run; valid: ['none', 'cfg'] (no "
                             "classifier guidance)")
        if method == "none":
            return self.denoiser
        if self.config.p_uncond <= 0:
            raise ValueError("cfg guidance needs a run trained with caption dropout (p_uncond > 0)")
        return ClassifierFreeGuidance(self.denoiser, scale, self.condition([""]), rescale=rescale, interval=interval)

    @torch.no_grad()
    def generate_embeddings(self, prompts: list[str], *, scale: float = 1.0, best_of: int | None = None,
                            sampler: str | None = None, steps: int | None = None, seed: int = 0,
                            progress: bool = True) -> Tensor:
        """Unit CLIP image embeddings (N, D) on the CPU, one per prompt: `best_of`
        candidates each (CFG at `scale`; 1 = conditional), mapped back from the
        standardised space, normalised, the one nearest the prompt's text embedding kept."""
        from ..sampling import sample

        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        k = self.config.best_of if best_of is None else best_of
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"best_of={k!r} is not valid; valid: an integer >= 1")
        denoiser = self.denoiser if scale == 1 else self.guide("cfg", scale)
        out = []
        for rows, chunk_seed in sample_chunks(len(prompts), seed):
            chunk = list(prompts[rows])
            cond = self.condition([p for p in chunk for _ in range(k)])     # prompt-major: p0 c0, p0 c1, ...
            x = sample(denoiser, (len(chunk) * k, self.dim), sampler or self.config.sampler,
                       steps or self.config.sample_steps, seed=chunk_seed, device=self.device, cond=cond,
                       progress=progress).x
            z = F.normalize(self.unstandardise(x.float().cpu()), dim=-1).view(len(chunk), k, self.dim)
            out.append(pick_best(z, self.clip.embed_text(chunk)))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def generate(self, n: int, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
                 seed: int = 0, *, prompt: str | None = None, prompts: list[str] | None = None, scale: float = 1.0,
                 best_of: int | None = None, progress: bool = True, **image_options) -> Tensor:
        """n unit CLIP image embeddings (n, D) on the CPU for `prompts`, or all `prompt`, or
        "a handwritten <digit>" for the digits in turn (`generate_embeddings`).  A prior
        samples embeddings, not images: options of image sampling are refused."""
        from ..data.captions import caption
        from .base import check_sample_count

        if image_options or spacing is not None:
            raise ValueError("a prior run samples CLIP image embeddings, not images: use "
                             "run.generate_embeddings(prompts) in Python (an unCLIP decoder run turns them into "
                             "images), or `hirune eval` for its scores")
        n = check_sample_count(self.data, n) if prompts is None else len(prompts)
        if prompts is None:
            prompts = [prompt] * n if prompt is not None else [caption(i % 10) for i in range(n)]
        return self.generate_embeddings(list(prompts), scale=scale, best_of=best_of, sampler=sampler, steps=steps,
                                        seed=seed, progress=progress)

    def evaluate(self, n: int | None = None, *, nll: int = 0, text_accuracy: int = 0, denoising_error: int = 0,
                 scale: float = 1.0, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                 progress: bool = False, **unused) -> dict:
        """On n test images (spread over the split, sorted by digit on mnist5k), each with its
        caption in training phrasing i mod 4 and in held-out phrasing i mod len: the mean
        cosine similarity of the sampled embedding (best of 2 and of 1) to the true test
        image embedding, beside the caption's CLIP text embedding used directly as the
        guess; and the share of each whose nearest class prompt ("an image of a {name}",
        CLIP zero-shot) is the captioned digit (the true image embeddings' share too)."""
        from ..data import load_dataset
        from ..data.captions import HELD_OUT_TEMPLATES, TRAIN_TEMPLATES, Captioner
        from ..evaluation.contrastive import class_embeddings, zero_shot_labels

        n = check_eval_counts(self, self.data, n, nll, text_accuracy, denoising_error)
        refuse_extras(self, nll, text_accuracy, denoising_error)
        test = load_dataset(self.data.name, "test")
        idx = spread(n, len(test.data))
        labels = test.labels[idx].long()
        true = self.clip.embed_image(test.data[idx])
        classes = class_embeddings(self.clip.embed_text, [CLASS_PROMPT], self.data.num_classes)
        captioner = Captioner(test.data, test.labels)
        sampling = {"scale": scale, "sampler": sampler, "steps": steps, "seed": seed, "progress": progress}
        report = {"step": self.step, "dataset": self.data.name, "examples": n, "scale": scale,
                  "true_image_zero_shot": _share(zero_shot_labels(true, classes), labels)}
        for phrasing, templates in (("train", TRAIN_TEMPLATES), ("held_out", HELD_OUT_TEMPLATES)):
            captions = captioner.captions(idx, torch.arange(n) % len(templates), templates=templates)
            guesses = {"best_of_2": self.generate_embeddings(captions, best_of=2, **sampling),
                       "best_of_1": self.generate_embeddings(captions, best_of=1, **sampling),
                       "text_embedding": self.clip.embed_text(captions)}
            for name, z in guesses.items():
                report[f"{phrasing}/{name}/cosine"] = float((z * true).sum(1).mean())
                report[f"{phrasing}/{name}/zero_shot"] = _share(zero_shot_labels(z, classes), labels)
        return report


def _share(predicted: Tensor, labels: Tensor) -> float:
    return float((predicted == labels).double().mean())


__all__ = ["Prior", "PriorDraw", "PriorFamilyConfig", "check_clip_reference", "pick_best"]
