"""The single-device training loop: plain data config in, a run directory out.

    run = train(TrainConfig(dataset="two_moons", model="mlp", steps=2000, out="runs/moons"))

The loop is written out below, not hidden behind callbacks: one optimizer step =
`grad_accum` micro-batches -> clip -> AdamW step -> EMA update (once per optimizer step).
Autoencoders with an adversarial loss (disc_weight > 0) add, from disc_start on, one
step of their patch discriminator on the same micro-batches (`Run.adversary`, an
`adversary.Adversary`).
Everything a resumed run needs is in the checkpoint (model, EMA, optimizer, step, the
noise generator and the global RNG); the learning rate is a pure function of the step and
the data order a pure function of (seed, micro-batch counter), so `resume=True` continues
the same run exactly.  A non-finite loss stops the run with its step number and leaves
the last good checkpoint as the latest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import objectives as O
from .checkpoint import (flatten_optimizer_state, latest_checkpoint, load_checkpoint, resolve_checkpoint,
                         save_checkpoint, staging_dir, unflatten_optimizer_state)
from .denoiser import Denoiser
from .ema import EMA
from .data.captions import TRAIN_TEMPLATES, caption
from .recompute import recompute_blocks

if TYPE_CHECKING:
    from .adversary import Adversary

OBJECTIVE_PREDICTION = {"flow_matching": "velocity"}  # other objectives: cfg.prediction
# keys that may differ between a run and its resumption
RESUMABLE_CHANGES = ("steps", "log_every", "sample_every", "ckpt_every", "resume", "device",
                     "eval_samples", "clip_x0", "sampler", "sample_steps", "num_samples", "strategy",
                     "sharded_checkpoints", "out", "recompute")


@dataclass
class TrainConfig:
    dataset: str = "two_moons"
    model: str = "mlp"
    model_config: dict = field(default_factory=dict)
    process: str = "ddpm"
    process_config: dict = field(default_factory=dict)
    objective: str = "regression"      # regression | score_matching | flow_matching | hybrid | autoencoder
    prediction: str = "eps"            # what the network outputs (eps | x0 | v | score | velocity)
    weighting: str = "none"            # none | min_snr | likelihood (hirune.weighting)
    min_snr_gamma: float = 5.0
    class_conditional: bool = False
    p_uncond: float = 0.1              # condition dropout for classifier-free guidance (class or text)
    text_encoder: str = ""             # text-to-image from captions: "" (off) | tiny | minilm (hirune.text)
    autoencoder: str = ""              # latent diffusion: a trained autoencoder run's directory (hirune.latent)
    coupling: str = "independent"      # flow matching: independent | ot (minibatch optimal transport)
    reflow_from: str = ""              # rectified-flow reflow: a trained flow-matching run (the teacher)
    reflow_steps: int = 50             # ODE steps of the teacher when it draws the (noise, data) pairs
    steps: int = 2000
    batch_size: int = 128              # per optimizer step (split into grad_accum micro-batches)
    grad_accum: int = 1
    lr: float = 1e-3
    warmup: int = 100
    lr_schedule: str = "cosine"        # cosine | constant
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"            # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False
    recompute: bool = False            # recompute each block's activations in backward (hirune.recompute)
    strategy: str = "ddp"              # with several processes (torchrun): ddp | zero1 | zero2 | zero3
    sharded_checkpoints: bool = True   # zero2/zero3: each rank writes its shards (torch.distributed.checkpoint)
    seed: int = 0
    log_every: int = 50
    sample_every: int = 1000
    ckpt_every: int = 1000
    sampler: str = "ddim"
    sample_steps: int = 50
    num_samples: int = 64
    clip_x0: bool = True               # clamp the x0 estimate to [-1, 1] when sampling images
    eval_samples: int = 0              # `hirune train` then scores this many EMA samples (eval.json)
    out: str = "runs/default"
    device: str = "auto"
    resume: bool = False


def check_config(cfg: TrainConfig) -> None:
    from .models import AUTOENCODERS

    choices = {"objective": (*O.OBJECTIVES, "autoencoder"), "lr_schedule": ("cosine", "constant"),
               "precision": ("auto", "fp32", "bf16", "fp16")}
    for key, valid in choices.items():
        if getattr(cfg, key) not in valid:
            raise ValueError(f"{key}={getattr(cfg, key)!r} is not valid; valid: {list(valid)}")
    if (cfg.objective == "nll") != (cfg.model == "flow"):
        raise ValueError("objective='nll' goes with model='flow' (a normalizing flow) and only with it; "
                         f"got objective={cfg.objective!r}, model={cfg.model!r}")
    if (cfg.objective == "classifier") != (cfg.model == "classifier"):
        raise ValueError("objective='classifier' goes with model='classifier' (a noise-aware classifier) "
                         f"and only with it; got objective={cfg.objective!r}, model={cfg.model!r}")
    if cfg.text_encoder:
        from .text import TEXT_ENCODERS

        if cfg.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder={cfg.text_encoder!r} is not valid; valid: {['', *TEXT_ENCODERS]}")
        if cfg.model not in ("unet", "dit", "uvit") or cfg.class_conditional:
            raise ValueError("text conditioning (text_encoder) needs model='unet', 'dit' or 'uvit' and "
                             f"class_conditional=false; got model={cfg.model!r}, "
                             f"class_conditional={cfg.class_conditional}")
    if cfg.autoencoder and (cfg.objective in ("classifier", "nll", "autoencoder") or cfg.model == "mlp"):
        raise ValueError("autoencoder= (latent diffusion) applies to diffusion, score and flow-matching runs of "
                         f"image networks (unet, dit, uvit); got objective={cfg.objective!r}, model={cfg.model!r}")
    if cfg.objective == "classifier" and not cfg.class_conditional:
        raise ValueError("objective='classifier' needs the labels: set class_conditional=true")
    if (cfg.objective == "autoencoder") != (cfg.model in AUTOENCODERS):
        raise ValueError(f"objective='autoencoder' goes with model in {list(AUTOENCODERS)} and only with them; "
                         f"got objective={cfg.objective!r}, model={cfg.model!r}")
    if cfg.objective == "autoencoder" and cfg.class_conditional:
        raise ValueError("objective='autoencoder' is unconditional: set class_conditional=false")
    if cfg.weighting not in O.WEIGHTINGS:
        raise ValueError(f"weighting={cfg.weighting!r} is not valid; valid: {list(O.WEIGHTINGS)}")
    if cfg.weighting != "none" and cfg.objective not in ("regression", "score_matching"):
        raise ValueError(f"weighting applies to objective 'regression' or 'score_matching', not {cfg.objective!r}")
    if cfg.coupling not in O.COUPLINGS:
        raise ValueError(f"coupling={cfg.coupling!r} is not valid; valid: {list(O.COUPLINGS)}")
    if (cfg.coupling != "independent" or cfg.reflow_from) and cfg.objective != "flow_matching":
        raise ValueError("coupling and reflow_from apply to objective='flow_matching'")
    if not 0.0 <= cfg.p_uncond < 1.0:
        raise ValueError(f"p_uncond must be in [0, 1), got {cfg.p_uncond}")
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by grad_accum={cfg.grad_accum}")
    from .distributed.strategy import STRATEGIES

    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"strategy={cfg.strategy!r} is not valid; valid: {list(STRATEGIES)}")
    for key in ("steps", "batch_size", "grad_accum", "sample_steps", "num_samples"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(cfg, key)}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to cfg.lr, then constant or cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def micro_batch_indices(n: int, size: int, counter: int, seed: int) -> torch.Tensor:
    """Indices of micro-batch number `counter`: a stream of per-epoch permutations seeded by
    (seed, epoch), so the data order depends only on the counter (exact resume) and every
    example is seen once per epoch."""
    start = counter * size
    out = []
    while len(out) < size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset: offset + size - len(out)].tolist())
    return torch.tensor(out)


class Run:
    """Everything built from a config: data, process, model, denoiser, optimizer, EMA."""

    def __init__(self, cfg: TrainConfig, distributed: bool = True):
        from . import make_process
        from .data import load_dataset
        from .distributed import runtime
        from .distributed.strategy import make_optimizer, wrap
        from .models import build_model

        check_config(cfg)
        torch.manual_seed(cfg.seed)  # model init and dropout; a resumed run restores its RNG state
        self.cfg = cfg
        if distributed:  # joins torchrun's process group when there is one
            self.world, self.device = runtime.setup(cfg.device)
        else:
            self.world = runtime.World()
            self.device = torch.device(cfg.device if cfg.device != "auto"
                                       else "cuda" if torch.cuda.is_available() else "cpu")
        per_rank = cfg.grad_accum * self.world.size
        if cfg.batch_size % per_rank:
            raise ValueError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by grad_accum x "
                             f"world size = {cfg.grad_accum} x {self.world.size}")
        self.micro_batch = cfg.batch_size // per_rank  # per rank
        self.data = load_dataset(cfg.dataset, "train")
        self.process = make_process(cfg.process, **cfg.process_config)
        self.prediction = OBJECTIVE_PREDICTION.get(cfg.objective, cfg.prediction)
        model_cfg = dict(cfg.model_config)
        self.is_flow = cfg.model == "flow"
        self.is_autoencoder = cfg.objective == "autoencoder"
        if self.is_autoencoder and self.data.kind != "image":
            raise ValueError(f"objective='autoencoder' needs images; {cfg.dataset} holds {self.data.kind} data")
        if not (self.is_flow or self.is_autoencoder):
            # the embedding sees t in [0, 1000) whatever the units: T = 1000 steps, or t in [0, 1]
            model_cfg.setdefault("time_scale", 1000.0 / self.process.T if self.process.discrete else 1000.0)
        if cfg.class_conditional:
            if not self.data.num_classes:
                raise ValueError(f"class_conditional needs labels; {cfg.dataset} has none")
            model_cfg.setdefault("num_classes", self.data.num_classes)
        self.text = self.captioner = None
        if cfg.text_encoder:  # captions written from labels and measured attributes, encoded per batch
            from .data.captions import Captioner
            from .text import TextConditioner

            self.captioner = Captioner(self.data.data, self.data.labels)
            self.text = TextConditioner(cfg.text_encoder)
            for key, value in self.text.model_config().items():
                model_cfg.setdefault(key, value)
        # latent diffusion: the diffusion's data are the scaled latents of a frozen autoencoder
        self.first_stage, self.latents, self.sample_shape = None, None, tuple(self.data.shape)
        if cfg.autoencoder:
            from .latent import FirstStage

            self.first_stage = FirstStage(cfg.autoencoder, self.device)
            if self.first_stage.dataset != cfg.dataset:
                raise ValueError(f"the autoencoder {cfg.autoencoder} was trained on {self.first_stage.dataset}, "
                                 f"this run is on {cfg.dataset}")
            self.latents = self.first_stage.moments(self.data.data).cpu()   # KL: (mean, std) on the channels
            self.sample_shape = self.first_stage.latent_shape(tuple(self.data.shape))
        learned = cfg.objective == "hybrid"
        if self.is_flow:
            model_cfg.setdefault("shape", tuple(self.data.shape))
        elif cfg.model == "classifier":
            model_cfg.pop("num_classes", None)
            model_cfg.setdefault("num_classes", self.data.num_classes)
            model_cfg.setdefault("in_channels", self.data.shape[0])
        elif self.is_autoencoder:
            model_cfg.setdefault("in_channels", self.data.shape[0])
            model_cfg.setdefault("image_size", self.data.shape[1])
        elif cfg.model == "mlp":
            model_cfg.setdefault("dim", self.data.data[0].numel())
            model_cfg.setdefault("out_mult", 2 if learned else 1)
        else:
            model_cfg.setdefault("in_channels", self.sample_shape[0])
            if learned:
                model_cfg.setdefault("learned_sigma", True)
            if cfg.model in ("dit", "uvit"):  # transformers: a position per patch of a fixed size
                model_cfg.setdefault("image_size", self.sample_shape[1])
        self.model = build_model(cfg.model, **model_cfg).to(self.device)
        if cfg.recompute and not recompute_blocks(self.model):
            raise ValueError(f"recompute=true: model {cfg.model!r} has no repeated blocks to recompute")
        clip = (-1.0, 1.0) if cfg.clip_x0 and self.data.kind == "image" and not cfg.autoencoder else None
        self.is_classifier = cfg.objective == "classifier"
        self.noise_rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.reflow_noise = self._reflow_pairs() if cfg.reflow_from else None
        if self.is_flow:
            self._init_flow()
        self.latent_stats = None  # autoencoders: `autoencoding.latent_statistics`, saved with each checkpoint
        self.denoiser = None if self.is_classifier or self.is_flow or self.is_autoencoder else Denoiser(
            self.model, self.process, self.prediction, learned_variance=learned, clip_x0=clip)
        self.time_sampler = O.ImportanceTimeSampler(self.process.T) if learned else None
        self.step = 0
        self.terms: dict = {}  # the named parts of the last micro-batch's loss, for the log
        self.dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else None, "fp32": None,
                      "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        # channels-last activations: the fast convolution layout of tensor cores
        self.channels_last = self.device.type == "cuda" and self.data.kind == "image"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # the strategy wraps (DDP) or shards in place (FSDP2) before the EMA and the optimizer
        # see the parameters, so under FSDP2 both hold shards
        # FSDP2 under bf16 gathers bf16 weights and reduces fp32 gradients (the 2/2/12 of ZeRO)
        wrapped = wrap(self.model, cfg.strategy, self.world, self.device,
                       param_dtype=torch.bfloat16 if self.dtype == torch.bfloat16 else None)
        self.optimizer = make_optimizer(self.model, cfg.strategy, self.world, self.device, cfg.lr, cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay)
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped
        self.scaler = make_grad_scaler(self.device, self.dtype == torch.float16, self.world.distributed)
        # autoencoders' optional adversarial loss: the patch discriminator and its optimizer
        self.adversary = None
        if self.is_autoencoder and self.model.config.disc_weight > 0:
            from .adversary import Adversary

            self.adversary = Adversary(self.model.config, cfg, self.world, self.device, self.data.shape[-1],
                                       dtype=self.dtype, autocast=self.autocast, channels_last=self.channels_last)

    def active_adversary(self) -> Adversary | None:
        """`adversary` where this step trains with it (from disc_start on), else None."""
        return self.adversary if self.adversary is not None and self.adversary.active(self.step) else None

    def autocast(self):
        """The training steps' autocast context (bf16 on CUDA by default; off in fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    def _reflow_pairs(self) -> torch.Tensor:
        """Rectified flow's reflow (Liu et al. 2023, sec. 3.3): the teacher run maps seeded
        noise z to x = ODE(z); the data becomes those x, and training regresses on the fixed
        pairs (x, z) instead of independent noise.  Deterministic, so a resumed run redraws
        the same pairs.  Returns z aligned with the new `self.data.data`."""
        import dataclasses as dc

        from .samplers import get_sampler
        from .timesteps import time_grid

        teacher = load_run(self.cfg.reflow_from)
        if teacher.cfg.objective != "flow_matching" or teacher.cfg.dataset != self.cfg.dataset:
            raise ValueError(f"reflow_from must be a flow-matching run on {self.cfg.dataset}; "
                             f"{self.cfg.reflow_from} is {teacher.cfg.objective} on {teacher.cfg.dataset}")
        if (teacher.cfg.process, teacher.cfg.process_config) != (self.cfg.process, self.cfg.process_config):
            raise ValueError("reflow_from was trained on another process")
        g = torch.Generator().manual_seed(self.cfg.seed + 3)
        z = torch.randn(self.data.data.shape, generator=g)
        ts = time_grid(teacher.process, self.cfg.reflow_steps)
        sampler = get_sampler(name=teacher.cfg.sampler)
        with torch.no_grad():
            x = torch.cat([sampler(teacher.denoiser, zc, ts).x for zc in z.split(1000)])
        self.data = dc.replace(self.data, data=x, labels=None, num_classes=0)
        return z.to(self.device)

    def _init_flow(self) -> None:
        """Data-dependent initialisation (ActNorm) on a fixed batch, before the EMA copies
        the weights; its own generator, so the training noise stream is unchanged."""
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        idx = torch.randperm(len(self.data.data), generator=g)[:min(512, len(self.data.data))]
        x = self.data.data[idx]
        if self.data.levels:
            from .likelihood import check_quantized, dequantize

            check_quantized(self.data.data, self.data.levels)
            x = dequantize(x, self.data.levels, g)
        x = x.to(self.device)
        with torch.no_grad():
            self.model.train()
            self.model.log_prob(x)

    def draw(self, n: int, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """Every random input of the loss for a micro-batch of n examples, from the run's
        noise generator: condition dropout, then times, then noise (flows: dequantization
        noise).  Every rank draws for the whole global batch and keeps its slices, so the run
        is the same computation whatever the world size and accumulation (and a resume may
        change them)."""
        cfg, g, dev = self.cfg, self.noise_rng, self.device
        out: dict[str, torch.Tensor] = {}
        if (cfg.class_conditional or cfg.text_encoder) and cfg.p_uncond > 0 and not self.is_classifier:
            out["drop"] = torch.rand(n, generator=g, device=g.device).to(dev) < cfg.p_uncond
        if self.is_autoencoder:  # a KL autoencoder's posterior sample noise; VQ draws nothing
            if cfg.model == "vq_autoencoder":
                return out
            return {"noise": torch.randn((n, *self.model.latent_shape(shape)), generator=g, device=dev)}
        if self.first_stage is not None and self.first_stage.stochastic:  # the posterior sample of each example
            out["latent_noise"] = torch.randn((n, *self.sample_shape), generator=g, device=dev)
        if cfg.text_encoder:  # which training phrasing each caption uses
            out["template"] = torch.randint(len(TRAIN_TEMPLATES), (n,), generator=g, device=g.device).to(dev)
        if self.is_flow:
            if self.data.levels:
                out["u"] = torch.rand((n, *shape), generator=g, dtype=self.data.data.dtype, device=dev)
            return out
        if cfg.objective == "flow_matching" and cfg.coupling == "ot":  # noise first, as ot pairing draws it
            out["noise"] = torch.randn((n, *shape), generator=g, dtype=self.data.data.dtype, device=dev)
        if self.time_sampler is not None:
            out["t"], out["t_weights"] = self.time_sampler.sample(n, g, dev)
        elif cfg.weighting == "likelihood":
            out["t"] = O.sample_likelihood_times(self.process, n, g, dev)
        else:
            out["t"] = O.sample_times(self.process, n, g, dev)
        if "noise" not in out and self.reflow_noise is None:
            out["noise"] = torch.randn((n, *shape), generator=g, dtype=self.data.data.dtype, device=dev)
        return out

    def loss(self, x0: torch.Tensor, y: torch.Tensor | None, d: dict[str, torch.Tensor],
             idx: torch.Tensor | None = None) -> O.Loss:
        """The objective on this rank's examples x0 (labels y, positions idx in the data)
        with this rank's slice `d` of `draw`."""
        cfg = self.cfg
        if self.first_stage is not None:  # latent diffusion: x0 holds posterior moments; draw the latents
            x0 = self.first_stage.sample(x0, d.get("latent_noise"))
        if self.is_autoencoder:
            from .autoencoding import autoencoder_loss

            adversary = self.active_adversary()  # VQGAN's adversarial term with its adaptive weight (eq. 7)
            gan = adversary.generator_kwargs(self.model) if adversary is not None else {}
            return autoencoder_loss(self.forward, x0, self.model.config, noise=d.get("noise"), dataset=cfg.dataset,
                                    **gan)
        if self.is_flow:
            return O.nll_loss(self.forward, None, x0, levels=self.data.levels, u=d.get("u"))
        if y is not None and "drop" in d:
            # condition dropout: the null label num_classes, so one network learns both
            y = torch.where(d["drop"].to(y.device), torch.full_like(y, self.data.num_classes), y)
        kw = {"cond": {"y": y} if cfg.class_conditional else None, "t": d["t"]}
        if self.text is not None:
            kw["cond"] = self.text(self.captioner.captions(idx, d["template"], d.get("drop")), self.device)
        if cfg.objective == "regression":
            return O.regression_loss(self.forward, self.process, x0, target=cfg.prediction, weighting=cfg.weighting,
                                     min_snr_gamma=cfg.min_snr_gamma, noise=d["noise"],
                                     t_importance=cfg.weighting == "likelihood", **kw)
        if cfg.objective == "score_matching":
            return O.score_matching_loss(self.forward, self.process, x0, prediction=cfg.prediction,
                                         weighting=cfg.weighting, noise=d["noise"],
                                         t_importance=cfg.weighting == "likelihood", **kw)
        if cfg.objective == "hybrid":
            return O.hybrid_loss(self.forward, self.process, x0, prediction=cfg.prediction, noise=d["noise"],
                                 t_weights=d["t_weights"], **kw)
        if cfg.objective == "flow_matching":
            noise = self.reflow_noise[idx] if self.reflow_noise is not None else d["noise"]
            if cfg.coupling == "ot":
                noise = O.ot_pairing(x0, noise)  # exact OT within this rank's micro-batch
            return O.flow_matching_loss(self.forward, self.process, x0, noise=noise, **kw)
        return O.OBJECTIVES[cfg.objective](self.forward, self.process, x0, noise=d["noise"], **kw)

    def batch_source(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The training data (latent diffusion: its latents) and labels on the device;
        images channels-last on CUDA."""
        data = self.latents if self.latents is not None else self.data.data
        data, labels = data.to(self.device), self.data.labels
        if self.channels_last:
            data = data.contiguous(memory_format=torch.channels_last)
        return data, labels.to(self.device) if labels is not None else None

    def train_step(self, data: torch.Tensor, labels: torch.Tensor | None) -> tuple[float, float]:
        """One optimizer step at `self.step`: `grad_accum` micro-batches (the batch is a pure
        function of the seed and the step; each rank takes its slice of every micro-batch),
        clipping, AdamW at `lr_at(step)`, one EMA update; with an active adversarial loss,
        the discriminator's step on the same micro-batches.  Returns the global
        (loss, grad norm) with a single device sync; raises FloatingPointError, on every
        rank and before touching the weights, on a non-finite loss."""
        from .distributed.strategy import grad_norm_value, sync_gradients

        cfg, world, adversary = self.cfg, self.world, self.active_adversary()
        optimizers = [self.optimizer] + ([self.adversary.optimizer] if self.adversary is not None else [])
        for optimizer in optimizers:  # one schedule
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        n, b = cfg.batch_size // cfg.grad_accum, self.micro_batch
        # the whole global batch's examples and random draws, the same on every rank: micro-batch
        # k of rank r is rows k n + r b ... k n + (r + 1) b, whatever the accumulation and world size
        batch_idx = micro_batch_indices(len(data), cfg.batch_size, self.step, cfg.seed)
        draws = self.draw(cfg.batch_size, self.sample_shape)
        total = torch.zeros((), device=self.device)
        pairs = []  # (images, reconstructions) of each micro-batch, for the discriminator
        for k in range(cfg.grad_accum):
            mine = slice(k * n + world.rank * b, k * n + (world.rank + 1) * b)
            idx = batch_idx[mine].to(self.device)
            d = {key: v[mine] for key, v in draws.items()}
            y = labels[idx] if labels is not None and cfg.class_conditional else None
            with sync_gradients(self.forward, cfg.strategy, last=k == cfg.grad_accum - 1):
                with self.autocast():
                    out = self.loss(data[idx], y, d, idx)
                self.terms = out.terms  # the last micro-batch's named parts, for the log
                self.scaler.scale(out.loss / cfg.grad_accum).backward()
            total += out.loss.detach().float() / cfg.grad_accum
            if adversary is not None:
                pairs.append((data[idx], out.reconstruction))
            if self.time_sampler is not None:  # Improved DDPM's sampler learns from every rank's losses
                self.time_sampler.update(*self._gather(d["t"], out.terms["vlb_per_sample"]))
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients before clipping (else a no-op)
        grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        d_total = d_norm = torch.zeros((), device=self.device)
        if adversary is not None:  # then the discriminator (taming's second optimizer) on the same micro-batches
            d_total, d_norm = adversary.step(pairs)
        losses = torch.stack([total, d_total])
        if world.distributed:  # the mean over ranks (SUM then divide: AVG is unreliable on gloo)
            torch.distributed.all_reduce(losses)
            losses = losses / world.size
        loss_value, d_value, norm_value, d_norm_value = torch.cat(
            [losses, torch.stack([grad_norm.float(), d_norm.float()])]).tolist()
        if not math.isfinite(loss_value) or not math.isfinite(d_value):
            which = "loss" if not math.isfinite(loss_value) else "discriminator loss"
            raise FloatingPointError(f"non-finite {which} at step {self.step}")
        self.scaler.step(self.optimizer)      # fp16: skipped when a gradient overflowed
        self.scaler.update()
        if adversary is not None:
            adversary.optimizer.step()
            self.terms.update(adversary.terms, d_loss=d_value, d_grad_norm=d_norm_value)
        self.ema.update(self.model)
        self.step += 1
        return loss_value, norm_value

    def _gather(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each tensor concatenated over the ranks in rank order (itself on one process)."""
        if not self.world.distributed:
            return tensors
        out = []
        for x in tensors:
            parts = [torch.empty_like(x) for _ in range(self.world.size)]
            torch.distributed.all_gather(parts, x.contiguous())
            out.append(torch.cat(parts))
        return out

    # --- checkpoints -----------------------------------------------------------------
    def config_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in RESUMABLE_CHANGES}

    @property
    def sharded(self) -> bool:
        """Whether this run keeps FSDP2 shards (zero2 / zero3 on several processes)."""
        from .distributed.strategy import FSDP_STRATEGIES

        return self.world.distributed and self.cfg.strategy in FSDP_STRATEGIES

    def save(self) -> Path | None:
        """Write a checkpoint (every rank calls it).  Sharded runs write their shards from
        every rank (`distributed/sharded.py`, unless sharded_checkpoints=False); otherwise
        the whole state is gathered and rank 0 writes it.  Either way any world size
        resumes it.  Returns the path on rank 0."""
        from .distributed import sharded
        from .distributed.state import full_state

        state = {"config": self.config_dict(), "run_config": dataclasses.asdict(self.cfg),
                 "world_size": self.world.size, "strategy": self.cfg.strategy,
                 "ema_updates": self.ema.num_updates, "model_config": dataclasses.asdict(self.model.config)}
        tensors = {"rng": {"noise": self.noise_rng.get_state(), "torch_cpu": torch.get_rng_state()}}
        if self.time_sampler is not None:
            tensors["time_sampler"] = self.time_sampler.state_dict()
        if self.scaler.is_enabled():  # fp16's loss scale and its growth counter
            state["grad_scaler"] = {k: float(v) if isinstance(v, torch.Tensor) else v
                                    for k, v in self.scaler.state_dict().items()}
        if self.is_autoencoder:  # the latent scale of these (EMA) weights, for latent diffusion
            state["latent_stats"] = self.compute_latent_stats()
        if self.adversary is not None:  # the discriminator and its AdamW, replicated: rank 0's copy
            disc_tensors, disc_state = self.adversary.checkpoint()
            tensors.update(disc_tensors)
            state.update(disc_state)
        staged = None
        if self.sharded and self.cfg.sharded_checkpoints:
            staged = staging_dir(self.cfg.out, self.step)
            if self.world.main:  # a folder left by a crash at this very step is stale
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir(parents=True)
            torch.distributed.barrier()
            state.update(layout="sharded", optimizer=sharded.save(self, staged / sharded.SHARDS),
                         parameters=[n for n, _ in self.model.named_parameters()])
        else:
            whole = full_state(self)
            if whole is not None:
                model_sd, ema_sd, optim_sd = whole
                opt_tensors, state["optimizer"] = flatten_optimizer_state(optim_sd)
                tensors.update(model=model_sd, ema=ema_sd, optimizer=opt_tensors)
        path = save_checkpoint(self.cfg.out, self.step, tensors, state, staged=staged) if self.world.main else None
        if self.world.distributed:
            torch.distributed.barrier()  # nobody reads or overwrites a checkpoint half written
        return path

    def load(self, path) -> None:
        from .distributed import sharded
        from .distributed.state import check_same_checkpoint, load_full_state

        path = resolve_checkpoint(path)
        tensors, state = load_checkpoint(path, expect_config=self.config_dict())
        check_same_checkpoint(self.world, path, state)
        if state.get("layout") == "sharded" and self.sharded:
            sharded.load(self, path, state["optimizer"])
            self.ema.num_updates = state["ema_updates"]
        else:
            if state.get("layout") == "sharded":
                model_sd, ema_sd, optim_sd = sharded.read_whole(path, state)
            else:
                model_sd, ema_sd = tensors["model"], tensors["ema"]
                optim_sd = unflatten_optimizer_state(tensors["optimizer"], state["optimizer"])
            load_full_state(self, model_sd, ema_sd, optim_sd, state["ema_updates"])
        self.noise_rng.set_state(tensors["rng"]["noise"])
        torch.set_rng_state(tensors["rng"]["torch_cpu"])
        if self.time_sampler is not None:
            self.time_sampler.load_state_dict(tensors["time_sampler"])
        if self.scaler.is_enabled() and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        if self.adversary is not None:
            self.adversary.load(tensors, state)
        self.step = state["step"]

    @torch.no_grad()
    def compute_latent_stats(self) -> dict:
        """`autoencoding.latent_statistics` of the EMA weights on the training images."""
        from .autoencoding import latent_statistics
        from .distributed.strategy import gathered

        with self.ema.applied(self.model), gathered(self.model):
            self.latent_stats = latent_statistics(self.model, self.data.data)
        return self.latent_stats

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in data space: latent diffusion decodes its latents, others are unchanged."""
        return self.first_stage.decode(x) if self.first_stage is not None else x

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> the space the diffusion runs in (the inverse of `decode`): latent
        diffusion encodes to the scaled posterior mean (VQ: the codes), others are unchanged."""
        return self.first_stage.encode(images).to(images.device) if self.first_stage is not None else images

    # --- previews --------------------------------------------------------------------
    @torch.no_grad()
    def write_samples(self, path: Path) -> Path | None:
        """A grid of EMA samples, written by rank 0.  Sharded (FSDP2) models sample on every
        rank with the weights gathered; otherwise rank 0 samples alone."""
        from .distributed.strategy import gathered
        from .samplers import sample
        from .viz import image_grid, scatter_grid

        cfg = self.cfg
        if not (self.world.main or self.sharded):
            torch.distributed.barrier()
            return None
        cond = {}
        if cfg.class_conditional:
            cond = {"y": torch.arange(cfg.num_samples, device=self.device) % self.data.num_classes}
        elif self.text is not None:  # "a handwritten zero", "a handwritten one", ...
            cond = self.text([caption(i % 10) for i in range(cfg.num_samples)], self.device)
        self.model.eval()
        with self.ema.applied(self.model), gathered(self.model):
            if self.is_autoencoder:  # originals over reconstructions, eight per row, spread over the data
                from .autoencoding import originals_over_reconstructions

                idx = torch.linspace(0, len(self.data.data) - 1, 8 * max(1, cfg.num_samples // 16)).long()
                x0 = self.data.data[idx].to(self.device)
                x = originals_over_reconstructions(x0, self.model(x0, sample=False).reconstruction)
            elif self.is_flow:
                g = torch.Generator(device=self.device).manual_seed(cfg.seed)
                x = self.model.sample(cfg.num_samples, generator=g)
            else:
                x = sample(self.denoiser, (cfg.num_samples, *self.sample_shape), cfg.sampler, cfg.sample_steps,
                           seed=cfg.seed, device=self.device, cond=cond).x
                x = self.decode(x)
        self.model.train()
        written = None
        if self.world.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            written = image_grid(x, path, nrow=8 if self.is_autoencoder else None) if self.data.kind == "image" else \
                scatter_grid([(f"step {self.step}", x)], path, truth=self.data.data[:2000])
        if self.world.distributed:
            torch.distributed.barrier()
        return written


def make_grad_scaler(device: torch.device, fp16: bool, distributed: bool) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 (Micikevicius et al. 2018): fp16's smallest normal is
    6e-5, so small gradients would flush to zero; the loss is multiplied by a scale before
    backward, the gradients divided by it before clipping, and a step whose gradients
    overflowed is skipped and the scale halved.  bf16 has fp32's exponent range and needs
    none, so the scaler is disabled there (every call a no-op).  On several processes the
    sharded scaler agrees on "overflowed" across ranks (ZeRO / FSDP2 ranks hold different
    gradient shards)."""
    if distributed:
        import warnings

        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        # its (1,)-shaped overflow flag meets FSDP2's DTensor gradients, which warn about it on every step
        warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1", category=UserWarning)
        return ShardedGradScaler(device.type, enabled=fp16)
    return torch.amp.GradScaler(device.type, enabled=fp16)


def train(cfg: TrainConfig, stop_after: int | None = None, progress: bool = True) -> Run:
    """Train to cfg.steps (or stop after `stop_after` optimizer steps of this call)."""
    from tqdm.auto import tqdm

    run = Run(cfg)
    main = run.world.main  # only rank 0 prints, logs and writes files
    out = Path(cfg.out)
    if cfg.resume and latest_checkpoint(out) is not None:
        run.load(out)
    elif latest_checkpoint(out) is not None:
        raise FileExistsError(f"{out} already holds a run; pass resume=true to continue it or "
                              "choose another out=")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if run.world.distributed:
        print(f"[hirune] rank {run.world.rank}/{run.world.size} on {run.device} ({run.world.backend}, "
              f"{cfg.strategy})", flush=True)
        if main:
            print(f"[hirune] global batch {cfg.batch_size} = micro-batch {run.micro_batch} x accumulation "
                  f"{cfg.grad_accum} x world size {run.world.size}", flush=True)
    data, labels = run.batch_source()
    end = cfg.steps if stop_after is None else min(cfg.steps, run.step + stop_after)
    bar = tqdm(total=cfg.steps, initial=run.step, desc="train", unit="step", disable=not (progress and main))
    log = open(out / "metrics.jsonl", "a") if main else None
    run.model.train()
    t_last, seen = time.perf_counter(), 0
    while run.step < end:
        lr = lr_at(cfg, run.step)
        try:
            total, grad_norm = run.train_step(data, labels)
        except FloatingPointError as e:
            if log:
                log.close()
            raise FloatingPointError(f"{e}; the last good checkpoint is kept in {out / 'checkpoints'}") from None
        seen += cfg.batch_size
        bar.update(1)
        if run.step % cfg.log_every == 0 or run.step == end:
            now = time.perf_counter()
            record = {"step": run.step, "loss": total, "lr": lr, "grad_norm": grad_norm,
                      "images_per_s": seen / max(now - t_last, 1e-9)}
            if run.is_autoencoder:  # reconstruction, KL or codebook perplexity and usage
                record.update({k: float(v) for k, v in run.terms.items()})
            t_last, seen = now, 0
            if log:
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{total:.4f}", img_s=f"{record['images_per_s']:.0f}")
        if cfg.ckpt_every and (run.step % cfg.ckpt_every == 0 or run.step == cfg.steps):
            run.save()
        if cfg.sample_every and not run.is_classifier and (run.step % cfg.sample_every == 0
                                                           or run.step == cfg.steps):
            run.write_samples(out / "samples" / f"step_{run.step:08d}.png")
    bar.close()
    if log:
        log.close()
    return run


def load_run(path: str | Path, use_ema: bool = True) -> Run:
    """Rebuild a trained run for sampling and evaluation from its directory, a checkpoint
    folder inside it (the EMA weights by default), or a file written by `hirune export`
    (the weights it holds)."""
    from .export import checkpoint_weights

    weights, state = checkpoint_weights(path, use_ema)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # the whole config (preview sampler and steps included) where the checkpoint has it
    config = {k: v for k, v in {**state["config"], **state.get("run_config", {})}.items() if k in fields}
    config.update(resume=False, strategy="ddp")
    run = Run(TrainConfig(**{**config, "device": "cpu"}), distributed=False)
    run.model.load_state_dict(weights)
    run.step = state["step"]
    run.latent_stats = state.get("latent_stats")
    run.model.eval()
    return run
