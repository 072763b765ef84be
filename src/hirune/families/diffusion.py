"""The diffusion family: every model that denoises along a Gaussian path x_t = alpha(t) x_0 +
sigma(t) eps and samples through the denoiser protocol -- DDPM, DDIM, Improved DDPM,
v-prediction, score models and score SDEs, flow matching and reflow -- on pixels or on the
latents of a frozen autoencoder (latent diffusion), unconditional, class-conditional or
text-conditional.

Its section of the config (`DiffusionConfig`) names the process, the objective and what the
network predicts; the conditioning (labels with dropout for classifier-free guidance, or
captions through a text encoder); the first stage (`autoencoder`); the flow-matching
coupling and reflow; and the preview sampler.  Sampling a trained run, its guidance, its
evaluation and its likelihood are here too (`generate`, `guide`, `evaluate`, `nll`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .. import objectives as O
from ..data import original_dataset
from ..process import Denoiser, make_process
from ..process.denoiser import check_prediction_suits
from . import (buckets, diffusion_eval, diffusion_sampling, dreambooth, embedding, finetune, micro, superres,
               textual_inversion)
from .base import Batch, Context, Draw, Family, checked_process, register
from .latent import FirstStage
from .settings import Range, check_choices

OBJECTIVES = tuple(O.OBJECTIVES)   # regression | score_matching | flow_matching | hybrid


@dataclass(frozen=True)
class DiffusionConfig:
    process: str = "ddpm"
    process_config: dict = field(default_factory=dict)
    objective: str = "regression"      # regression | score_matching | flow_matching | hybrid
    prediction: str = "eps"            # what the network outputs (eps | x0 | v | score | velocity)
    weighting: str = "none"            # none | min_snr | likelihood (objectives.weighting)
    min_snr_gamma: float = 5.0
    class_conditional: bool = False
    p_uncond: float = 0.1              # condition dropout for classifier-free guidance (class or text)
    text_encoder: str = ""             # captions: "" (off) | tiny | minilm | tiny+minilm (both; models.text)
    autoencoder: str = ""              # latent diffusion: a trained autoencoder run's directory (families.latent)
    coupling: str = "independent"      # flow matching: independent | ot (minibatch optimal transport)
    reflow_from: str = ""              # rectified-flow reflow: a trained flow-matching run (the teacher)
    reflow_steps: int = 50             # ODE steps of the teacher when it draws the (noise, data) pairs
    sampler: str = "ddim"              # previews and the default of `hirune sample`
    sample_steps: int = 50
    clip_x0: bool = True               # clamp the x0 estimate to [-1, 1] when sampling images
    clip: str = ""                     # unCLIP decoder: a trained clip run, whose image embeddings condition it
    p_text_drop: float = 0.5           # a text decoder's caption dropout (p_uncond drops the embedding)
    low_res: int = 0                   # super-resolution from low_res x low_res images (0: off; families.superres)
    noise_aug: float = 0.0             # SR: the largest noise augmentation level of the low-res input, in [0, 1]
    base: str = ""                     # fine-tuning: a trained diffusion run to start from (families.finetune)
    adapter: str = ""                  # with base: "" (full fine-tuning) | lora (the base frozen, adapters train)
    lora_rank: int = 4
    lora_alpha: float = 0.0            # the update's scale is lora_alpha / lora_rank; 0: alpha = rank (scale 1)
    lora_targets: str = "attention"    # attention | attention+mlp | all-linear | all | regexes (models.lora)
    lora_dropout: float = 0.0
    placeholder: str = ""              # textual inversion: a new word (e.g. <s*>) whose embedding alone trains
    initializer: str = ""              # with placeholder: the one-token word its embedding starts from
    instance: str = ""                 # with base: the subject's images (crossbar-sevens, digit:7, thick:3, a folder,
    #                                    .npz; data.instances): a new word's (placeholder) or else DreamBooth's
    instance_prompt: str = "a sks seven"
    class_prompt: str = "a seven"
    prior_weight: float = 1.0          # lambda of the prior-preservation loss (0: none)
    class_images: int = 100            # generated once by the frozen base under class_prompt
    buckets: bool = False              # aspect-ratio buckets: each batch one bucket of a bucketed dataset (families.buckets)
    micro_conditioning: bool = False   # SDXL: the network told original size, crop and target size (families.micro)
    micro_min_size: int = 0            # augmentation: original heights ~ U{micro_min_size .. H}, upscaled (0: off)
    micro_crop: int = 0                # augmentation: crops at offsets ~ U{-micro_crop .. micro_crop}^2 (0: off)
    noise_offset: float = 0.0          # training noise eps + noise_offset x N(0, 1) per image and channel
    train_until: float = 1.0           # a refiner (SDXL): training times from the lowest fraction of the range only
    explicit_uniform: bool = False     # CogVideoX: row i of the batch draws its time from stratum i of the range


def check_data_kind(family: str, dataset: str):
    """Clips go to the video family, images and points to the others (a dataset outside the
    registry, a folder or an .npz, holds images).  Returns the dataset's registry entry."""
    from ..data.registry import DATASETS

    spec = DATASETS.get(dataset)
    if family == "video" and (spec is None or spec.kind != "video"):
        videos = sorted(name for name, s in DATASETS.items() if s.kind == "video")
        raise ValueError(f"dataset={dataset!r} is not valid for family 'video'; valid: {videos}")
    if family != "video" and spec is not None and spec.kind == "video":
        raise ValueError(f"dataset={dataset!r} holds video data, which family {family!r} does not model; valid: "
                         "family=video (e.g. `hirune train cogvideox-moving-mnist5k`)")
    return spec


@dataclass
class DiffusionDraw(Draw):
    """drop: condition dropped (B,) bool; latent_noise: the first stage's posterior sample
    noise; template: the caption phrasing of each example; t (B,) and its importance
    weights; noise: eps (None with reflow's fixed pairs)."""

    drop: Tensor | None = None
    latent_noise: Tensor | None = None
    template: Tensor | None = None
    t: Tensor | None = None
    t_weights: Tensor | None = None
    noise: Tensor | None = None
    embed_drop: Tensor | None = None   # unCLIP decoder: the CLIP embedding set to zero (families.embedding)
    aug_level: Tensor | None = None    # super-resolution: the augmentation level a and noise eps' (families.superres)
    aug_noise: Tensor | None = None
    original_height: Tensor | None = None  # SDXL's micro-conditioning: sizes and crop offsets (families.micro)
    crop: Tensor | None = None
    offset_noise: Tensor | None = None     # noise offset's eps_c (B, C, 1, 1)
    example: Tensor | None = None      # DreamBooth: each row's instance or class image (families.dreambooth)
    is_class: Tensor | None = None
    bucket: Tensor | None = None       # aspect-ratio buckets: the batch's bucket and rows (families.buckets)
    bucket_example: Tensor | None = None


@register
class Diffusion(Family):
    name = "diffusion"
    Config = DiffusionConfig
    networks = ("mlp", "unet", "dit", "uvit", "diffusers")
    resumable = ("sampler", "sample_steps", "clip_x0")
    resizable_base = False  # base=RUN must be on data of this run's shape (finetune.check_base)
    ranges = {"p_uncond": Range(0, 1, high_open=True), "min_snr_gamma": Range(0, low_open=True),
              "reflow_steps": Range(1, integer=True), "sample_steps": Range(1, integer=True),
              "p_text_drop": Range(0, 1, high_open=True),
              "low_res": Range(0, integer=True), "noise_aug": Range(0, 1), **finetune.RANGES,
              **dreambooth.RANGES, **micro.RANGES,
              "train_until": Range(0, 1, low_open=True)}

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        self.process = make_process(config.process, **config.process_config)
        self.prediction = "velocity" if config.objective == "flow_matching" else config.prediction
        if config.class_conditional and not data.num_classes:
            raise ValueError(f"class_conditional needs labels; {data.name} has none")
        self.text = None
        if config.text_encoder:  # captions written from labels and measured attributes, encoded per batch
            from ..models.text import TextConditioner

            self.text = TextConditioner(config.text_encoder, self.caption_vocabulary())
        # latent diffusion: the diffusion's data are the scaled latents of a frozen autoencoder
        self.clip = self.image_embeds = None
        if config.clip:  # unCLIP's decoder: conditioned on the CLIP image embedding
            embedding.attach(self)
        self.first_stage, self.sample_shape = None, tuple(data.shape)
        if config.autoencoder:
            self.first_stage = FirstStage(self.references["first_stage"], self.device)
            if original_dataset(self.first_stage.dataset) != original_dataset(data.name):
                raise ValueError(f"the autoencoder {config.autoencoder} was trained on {self.first_stage.dataset}, "
                                 f"this run is on {data.name}; valid: data of {self.first_stage.dataset} (at any "
                                 "of its registered resolutions)")
            self.sample_shape = self.first_stage.latent_shape(tuple(data.shape))
        self.base_identity = None
        if network_config is None and "base" in self.references:  # fine-tuning: the base's network
            network_config = self._base_network_config()
        self.model = self._build(cfg.model, network_config or self._network_config())
        if "base" in self.references:
            finetune.attach(self)
        if config.placeholder:  # textual inversion: everything frozen but the new word's row
            textual_inversion.attach(self)
        learned = config.objective == "hybrid"
        clip = (-1.0, 1.0) if config.clip_x0 and data.kind == "image" and not config.autoencoder else None
        self.denoiser = Denoiser(self.model, self.process, self.prediction, learned_variance=learned, clip_x0=clip)
        self.loss_aware_times = O.LossAwareTimes(self.process.T) if learned else None
        self.captioner = self.latents = self.reflow_noise = None

    def _base_network_config(self) -> dict:
        """A fine-tuned run's network config: the base's, whole."""
        return finetune.network_config(self)

    def _network_config(self) -> dict:
        config, out = self.config, dict(self.cfg.model_config)
        # the embedding sees t in [0, 1000) whatever the units: T = 1000 steps, or t in [0, 1]
        out.setdefault("time_scale", 1000.0 / self.process.T if self.process.discrete else 1000.0)
        if config.class_conditional:
            out.setdefault("num_classes", self.data.num_classes)
        if self.text is not None:
            for key, value in self.text.model_config().items():
                out.setdefault(key, value)
        learned = config.objective == "hybrid"
        if self.cfg.model == "mlp":
            out.setdefault("dim", int(torch.Size(self.sample_shape).numel()))
            out.setdefault("out_mult", 2 if learned else 1)
        else:
            out.setdefault("in_channels", self.sample_shape[0])
            if learned:
                out.setdefault("learned_sigma", True)
            if config.clip:
                for key, value in embedding.network_config(self).items():
                    out.setdefault(key, value)
            if config.low_res:
                for key, value in superres.network_config(self).items():
                    out.setdefault(key, value)
            for key, value in micro.network_config(self).items():
                out.setdefault(key, value)
            if self.cfg.model in ("dit", "uvit"):  # transformers: a position per patch of a fixed size
                out.setdefault("image_size", self.sample_shape[1])
        return out

    @classmethod
    def check(cls, cfg, config) -> None:
        from ..sampling import SAMPLERS

        super().check(cfg, config)
        check_data_kind(cls.name, cfg.dataset)
        check_choices(config, {"objective": OBJECTIVES, "weighting": O.WEIGHTINGS, "coupling": O.COUPLINGS,
                               "sampler": tuple(SAMPLERS)})
        prediction = "velocity" if config.objective == "flow_matching" else config.prediction
        check_prediction_suits(prediction, checked_process(config))
        if config.text_encoder:
            from ..models.text import TEXT_CONDITIONERS

            if config.text_encoder not in TEXT_CONDITIONERS:
                raise ValueError(f"text_encoder={config.text_encoder!r} is not valid; valid: "
                                 f"{['', *TEXT_CONDITIONERS]}")
            if cfg.model == "mlp" or config.class_conditional:
                raise ValueError("text conditioning (text_encoder) needs model='unet', 'dit' or 'uvit' and "
                                 f"class_conditional=false; got model={cfg.model!r}, "
                                 f"class_conditional={config.class_conditional}")
        if config.autoencoder and cfg.model == "mlp":
            raise ValueError("autoencoder= (latent diffusion) needs an image network (unet, dit, uvit), not 'mlp'")
        if config.weighting != "none" and config.objective not in ("regression", "score_matching"):
            raise ValueError(f"weighting applies to objective 'regression' or 'score_matching', "
                             f"not {config.objective!r}")
        if (config.coupling != "independent" or config.reflow_from) and config.objective != "flow_matching":
            raise ValueError("coupling and reflow_from apply to objective='flow_matching'")
        if config.clip:
            embedding.check(cfg, config)
        if config.train_until < 1 and (config.objective == "hybrid" or config.weighting == "likelihood"):
            raise ValueError(f"train_until={config.train_until} is not valid with objective={config.objective!r}, "
                             f"weighting={config.weighting!r} (they draw their own times); valid: 1.0")
        if config.explicit_uniform and (config.objective == "hybrid" or config.weighting == "likelihood"):
            raise ValueError(f"explicit_uniform=true is not valid with objective={config.objective!r}, "
                             f"weighting={config.weighting!r} (they draw their own times); valid: false")
        if config.low_res or config.noise_aug:
            from ..data import example_shape

            superres.check(cfg, config, example_shape(cfg.dataset))
        if micro.active(config) or config.noise_offset:
            from ..data import example_shape

            micro.check(cfg, config, example_shape(cfg.dataset))
        finetune.check(cfg, config)
        textual_inversion.check(cfg, config)
        dreambooth.check(cfg, config)
        buckets.check(cfg, config)

    @classmethod
    def reference_paths(cls, config, training: bool) -> dict[str, str]:
        refs = {"first_stage": config.autoencoder} if config.autoencoder else {}
        if config.clip:
            refs["clip"] = config.clip
        refs.update(finetune.reference_paths(config, training))
        return refs  # reflow's teacher is loaded by `prepare` only when its pairs are not stored yet

    @classmethod
    def kept_references(cls, config) -> dict[str, str]:
        refs = super().kept_references(config)
        refs.pop("base", None)  # an adapter names its base (path, step, fingerprint); it keeps no copy
        return refs

    @classmethod
    def missing_reference(cls, role: str, path: str) -> str:
        if role == "first_stage":
            return (f"autoencoder run {path} does not exist; train one first, e.g. `hirune train kl-ae-mnist5k`, "
                    "then pass autoencoder=runs/kl-ae-mnist5k")
        if role == "clip":
            return f"clip run {path} does not exist; train one first, e.g. `hirune train clip-mnist5k`"
        if role == "base":
            return finetune.missing_reference(path)
        return (f"reflow_from run {path} does not exist (and this run has no reflow pairs of its own); train the "
                "teacher first, e.g. `hirune train flow-two-moons`")

    # --- training -------------------------------------------------------------------
    def prepare(self, data, context: Context) -> None:
        if self.config.placeholder:  # textual inversion: the subject's images, captioned from templates
            data = textual_inversion.instance_data(self, data)
        super().prepare(data, context)
        if self.text is not None and self.config.placeholder:
            self.captioner = textual_inversion.captioner(self)
        elif self.text is not None:
            self.captioner = self.make_captioner(data)
        if self.first_stage is not None:  # KL: (mean, std) on the channels, scaled
            self.latents = self.first_stage.moments(data.data).cpu()
        if self.clip is not None:  # the pixels' CLIP embeddings, once
            self.image_embeds = embedding.embed_training_images(self, data.data)
        if self.config.reflow_from:
            self._reflow(data, context)
        if dreambooth.active(self.config):  # DreamBooth: instance and class images, their prompts
            dreambooth.prepare(self, data, context)
        if self.config.buckets:  # aspect-ratio buckets: each bucket's members
            buckets.prepare(self, data)

    def caption_vocabulary(self) -> list[str] | None:
        """The word tokenizer's vocabulary (None: the digit captions', `data.captions`)."""
        return None

    def make_captioner(self, data):
        """The captions of the training examples (digit images: label, thickness, slant)."""
        from ..data.captions import Captioner

        return Captioner(data.data, data.labels)

    def _reflow(self, data, context: Context) -> None:
        """The (noise, data) pairs of reflow: stored in the run directory, else drawn from the
        teacher and stored.  The data become the teacher's samples."""
        from . import reflow

        origin = {"teacher": self.config.reflow_from, "steps": self.config.reflow_steps, "seed": self.cfg.seed,
                  "shape": list(data.data.shape)}
        pairs = reflow.read_pairs(context.run_dir, origin)
        if context.world.distributed:  # every rank has looked before rank 0 may write them
            torch.distributed.barrier()
        if pairs is None:
            if not Path(self.config.reflow_from).exists():
                raise FileNotFoundError(self.missing_reference("teacher", self.config.reflow_from))
            teacher = context.load_reference(self.config.reflow_from)
            reflow.check_teacher(teacher, self.config, data.name)
            pairs = reflow.draw_pairs(teacher, tuple(data.data.shape), self.cfg.seed, self.config.reflow_steps)
            if context.world.main:
                reflow.write_pairs(context.run_dir, *pairs, origin)
        z, x = pairs
        self.train_data = dataclasses.replace(data, data=x, labels=None, num_classes=0)
        self.reflow_noise = z.to(self.device)

    @property
    def uses_labels(self) -> bool:
        return self.config.class_conditional

    def training_data(self) -> tuple[Tensor, Tensor | None]:
        data, labels = super().training_data()
        return (self.latents if self.latents is not None else data), labels

    def draw(self, n: int, generator: torch.Generator) -> DiffusionDraw:
        """Condition dropout, the first stage's posterior noise, the caption phrasings, then
        times, then noise (noise before the times for OT coupling)."""
        config, g, dev = self.config, generator, self.device
        d = DiffusionDraw()
        if (config.class_conditional or config.text_encoder) and config.p_uncond > 0 and not config.clip:
            d.drop = torch.rand(n, generator=g, device=g.device).to(dev) < config.p_uncond
        if self.first_stage is not None and self.first_stage.stochastic:
            d.latent_noise = torch.randn((n, *self.sample_shape), generator=g, device=dev)
        if self.text is not None:
            from ..data.captions import TRAIN_TEMPLATES

            count = len(getattr(self.captioner, "templates", TRAIN_TEMPLATES))
            d.template = torch.randint(count, (n,), generator=g, device=g.device).to(dev)
        shape, dtype = (n, *self.sample_shape), torch.float32
        if config.objective == "flow_matching" and config.coupling == "ot":  # noise first, as ot pairing draws it
            d.noise = torch.randn(shape, generator=g, dtype=dtype, device=dev)
        if self.loss_aware_times is not None:
            d.t, d.t_weights = self.loss_aware_times.draw(n, g, dev)
        elif config.weighting == "likelihood":
            d.t = O.sample_likelihood_times(self.process, n, g, dev)
        else:
            d.t = O.sample_times(self.process, n, g, dev, until=config.train_until, stratified=config.explicit_uniform)
        if d.noise is None and self.reflow_noise is None:
            d.noise = torch.randn(shape, generator=g, dtype=dtype, device=dev)
        if config.clip:  # drawn last, so other runs draw what they always drew
            d.embed_drop, d.drop = embedding.draw(self, n, g)
        if config.low_res:  # drawn last, so runs without super-resolution draw what they always drew
            d.aug_level, d.aug_noise = superres.draw(self, n, g)
        if dreambooth.active(config):  # drawn last, so runs without DreamBooth draw what they always drew
            d = dreambooth.draw(self, d, n, g)
        if config.buckets:  # drawn last, so runs without buckets draw what they always drew
            d = buckets.draw(self, d, n, g)
        if micro.active(config):  # SDXL's sizes and crops, drawn last
            d.original_height, d.crop = micro.draw(self, n, g)
        if config.noise_offset:
            d.offset_noise = micro.draw_offset(self, n, g)
        return d

    def loss(self, forward: nn.Module, batch: Batch, draw: DiffusionDraw, step: int) -> O.Loss:
        if dreambooth.active(self.config):  # DreamBooth: the draw's rows; mean instance + lambda mean class loss
            out = self._loss(forward, dreambooth.batch(self, draw), draw, step)
            return dreambooth.prior_preserved(out, draw, self.config.prior_weight)
        if self.config.buckets:  # the draw's bucket: its rows, and the noise cut to its shape
            batch, draw = buckets.batch(self, draw)
        return self._loss(forward, batch, draw, step)

    def logged_terms(self, terms: dict) -> dict[str, float]:
        return dreambooth.logged_terms(terms)

    def _loss(self, forward: nn.Module, batch: Batch, draw: DiffusionDraw, step: int) -> O.Loss:
        config, x0, y = self.config, batch.x, batch.y
        if self.first_stage is not None:  # latent diffusion: x0 holds posterior moments; draw the latents
            x0 = self.first_stage.sample(x0, draw.latent_noise)
        if y is not None and draw.drop is not None:
            # condition dropout: the null label num_classes, so one network learns both
            y = torch.where(draw.drop.to(y.device), torch.full_like(y, self.data.num_classes), y)
        kw = {"cond": {"y": y} if config.class_conditional else None, "t": draw.t}
        if self.text is not None:
            kw["cond"] = self.text(self.captioner.captions(batch.idx, draw.template, draw.drop), self.device)
        if config.clip:
            kw["cond"] = {**(kw["cond"] or {}), **embedding.training_condition(self, batch.idx, draw.embed_drop)}
        if config.low_res:  # the low-resolution input is never dropped: CFG guides the text alone
            kw["cond"] = {**(kw["cond"] or {}), **superres.training_condition(self, x0, draw.aug_level, draw.aug_noise)}
        if draw.original_height is not None:  # SDXL: the images at their original sizes and crops, told or not
            x0, told = micro.training_batch(self, x0, draw.original_height, draw.crop)
            kw["cond"] = {**(kw["cond"] or {}), **told} or None
        if draw.offset_noise is not None:
            draw = dataclasses.replace(draw, noise=micro.offset_noise(self, draw.noise, draw.offset_noise))
        if config.objective == "regression":
            return O.regression_loss(forward, self.process, x0, target=config.prediction, weighting=config.weighting,
                                     min_snr_gamma=config.min_snr_gamma, noise=draw.noise,
                                     t_importance=config.weighting == "likelihood", **kw)
        if config.objective == "score_matching":
            return O.score_matching_loss(forward, self.process, x0, prediction=config.prediction,
                                         weighting=config.weighting, noise=draw.noise,
                                         t_importance=config.weighting == "likelihood", **kw)
        if config.objective == "hybrid":
            return O.hybrid_loss(forward, self.process, x0, prediction=config.prediction, noise=draw.noise,
                                 t_weights=draw.t_weights, **kw)
        noise = self.reflow_noise[batch.idx] if self.reflow_noise is not None else draw.noise
        if config.coupling == "ot":
            noise = O.ot_pairing(x0, noise)  # exact OT within this rank's micro-batch
        return O.flow_matching_loss(forward, self.process, x0, noise=noise, **kw)

    def after_micro_batch(self, draw: DiffusionDraw, out: O.Loss) -> None:
        if self.loss_aware_times is not None:  # Improved DDPM's time distribution learns from every rank's losses
            from ..distributed.runtime import gather

            self.loss_aware_times.update(*gather(self.context.world, draw.t, out.terms["vlb_per_sample"]))

    def checkpoint(self, ema):
        tensors, state = super().checkpoint(ema)
        if self.loss_aware_times is not None:
            tensors["time_sampler"] = self.loss_aware_times.state_dict()
        state.update(finetune.checkpoint_state(self))
        return tensors, state

    def restore(self, tensors: dict, state: dict) -> None:
        finetune.check_identity(self, state)
        super().restore(tensors, state)
        if self.loss_aware_times is not None:
            self.loss_aware_times.load_state_dict(tensors["time_sampler"])

    def restore_loaded(self, state: dict) -> None:
        finetune.check_identity(self, state)

    def frozen_names(self) -> list[str]:
        return finetune.frozen_names(self) or textual_inversion.frozen_names(self)

    def saved(self, run_dir: Path, step: int, ema) -> None:
        finetune.write_adapter(self, run_dir, step, ema)
        textual_inversion.write_embedding(self, run_dir, step, ema)

    def preview(self, n: int) -> Tensor:
        from ..data.captions import caption
        from ..sampling import sample

        cond = {}
        if self.config.class_conditional:
            cond = {"y": torch.arange(n, device=self.device) % self.data.num_classes}
        elif self.text is not None:  # "a handwritten zero", "a handwritten one", ...
            cond = self.text([caption(i % 10) for i in range(n)], self.device)
        if self.clip is not None:
            cond = {**cond, **embedding.preview_condition(self, n)}
        if self.config.low_res:  # the held-out images of those digits, downsampled
            labels = torch.arange(n) % 10 if self.data.num_classes else None
            cond = {**cond, **superres.sampling_condition(self, superres.test_low_res(self, labels, n), 0.0, 0)}
        cond = {**cond, **micro.sampling_condition(self, n, None, None)}  # SDXL: full size, uncropped
        if self.config.buckets:  # the buckets in turn, centred on the canvas
            return buckets.preview(self, n, cond)
        x = sample(self.denoiser, (n, *self.sample_shape), self.config.sampler, self.config.sample_steps,
                   seed=self.cfg.seed, device=self.device, cond=cond).x
        return self.decode(x)

    # --- the data space and the diffusion's space -------------------------------------
    def decode(self, x: Tensor) -> Tensor:
        """Samples in data space: latent diffusion decodes its latents, others are unchanged."""
        return self.first_stage.decode(x) if self.first_stage is not None else x

    def encode(self, images: Tensor) -> Tensor:
        """Images -> the space the diffusion runs in (the inverse of `decode`): latent
        diffusion encodes to the scaled posterior mean (VQ: the codes), others are unchanged."""
        return self.first_stage.encode(images).to(images.device) if self.first_stage is not None else images

    # --- inference: diffusion_sampling.py and diffusion_eval.py ----------------------
    def condition(self, labels: Tensor | None = None, prompts: list[str] | None = None,
                  embeddings: Tensor | None = None) -> dict:
        n = next((len(c) for c in (labels, prompts, embeddings) if c is not None), 1)
        return {**diffusion_sampling.condition(self, labels, prompts), **embedding.condition(self, embeddings),
                **micro.sampling_condition(self, n, None, None)}  # SDXL: full size, uncropped

    def class_labels(self, n: int, label: int | None = None, per_class: bool = False) -> Tensor:
        return diffusion_sampling.class_labels(self, n, label, per_class)

    def guide(self, method: str = "none", scale: float = 1.0, **options):
        return diffusion_sampling.guide(self, method, scale, **options)

    def generate(self, n: int, *args, **options):
        return diffusion_sampling.generate(self, n, *args, **options)

    def evaluate(self, n: int | None = None, **options) -> dict:
        return diffusion_eval.evaluate(self, n, **options)

    def nll(self, n: int, seed: int = 0) -> dict:
        return diffusion_eval.nll_report(self, n, seed)

    def use_adapters(self, adapters: list[tuple[str, float]], merge: bool = False) -> dict[str, float]:
        """Sample through LoRA adapters trained on this run's base: [(path, weight)] (see
        `finetune.use_adapters`)."""
        return finetune.use_adapters(self, adapters, merge)

    def use_embedding(self, path: str | Path) -> str:
        """Sample with a learned word: a textual-inversion embedding file (or run) learned for
        this run's text encoder; returns its placeholder (see `textual_inversion.use_embedding`)."""
        return textual_inversion.use_embedding(self, path)
