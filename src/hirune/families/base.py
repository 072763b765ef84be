"""The family interface: what the training loop, the checkpoints and the loader need from one
kind of model, and nothing else.

A family is one class in one module, registered by name (`register`); `TrainConfig.family`
names it and `TrainConfig.family_config` holds its own settings (its `Config` dataclass).
The same object serves training and inference:

    family = Family(cfg, config, data_format, device, references)   network, process, denoiser, ...
    family.prepare(train_data, context)           training only: what the data and the loop add
    draw = family.draw(n, generator)              every random input of a batch (a `Draw`)
    out = family.loss(forward, batch, draw, step) -> objectives.Loss
    family.after_micro_batch(draw, out)           learning from the losses (IDDPM's time sampler)
    tensors, state = family.checkpoint(ema)       what a checkpoint holds beyond the weights
    family.frozen_names()                         model state a reference provides, never saved
    family.saved(run_dir, step, ema)              files written beside each checkpoint (rank 0)
    x = family.preview(n)                         a preview's samples (EMA weights applied)
    family.generate(n, ...), family.evaluate(n, ...)   a loaded run (`training.loading.load`)

A family may build on other runs (`references`: latent diffusion's autoencoder, reflow's
teacher, a fine-tuned run's base); the trainer and the loader load them light and pass
them in, so no family loads a run itself.  Part of the network's state may come from a
reference and stay out of the checkpoints (`frozen_names`: a LoRA run's base weights);
the trainer leaves it out when saving and takes it from the built network when loading,
and a checkpoint must lack exactly those keys.  A family may bring a second player with its
own optimizer trained on the same micro-batches (`adversary`, an autoencoder's patch
discriminator), which the loop steps generically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..data import ArrayDataset, DataFormat
from ..distributed.runtime import World
from ..objectives import Loss
from ..data.sizes import check_count, check_fits
from .settings import Range, check_ranges, check_types


@dataclass(frozen=True)
class NoConfig:
    """The section of a family without settings of its own."""


@dataclass
class Draw:
    """Every random input of one batch's loss, drawn from the run's noise generator for the
    whole global batch; `slice` gives the rows of one rank's micro-batch.  Families subclass
    it with their own fields (None where a run draws nothing of that kind)."""

    def slice(self, rows: slice) -> Draw:
        return dataclasses.replace(self, **{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)
                                            if getattr(self, f.name) is not None})


@dataclass
class Batch:
    """One rank's micro-batch: examples x (N, ...), their labels y (N,) where the family uses
    labels, and their positions idx (N,) in the training data."""

    x: Tensor
    y: Tensor | None
    idx: Tensor


@dataclass
class Context:
    """What training gives a family beyond its data: the process group, the run directory,
    the autocast dtype and context, the image layout, and a loader for other runs."""

    world: World
    run_dir: Path
    dtype: torch.dtype | None = None
    autocast: Callable[[], AbstractContextManager] | None = None
    channels_last: bool = False
    load_reference: Callable[[str], Family] | None = None


class Family:
    """Base class of the families: defaults for the optional parts of the interface."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    networks: ClassVar[tuple[str, ...]] = ()      # network kinds (hirune.models.MODELS) it trains
    ranges: ClassVar[dict[str, Range]] = {}       # the valid range of each number in its Config
    resumable: ClassVar[tuple[str, ...]] = ()     # Config keys a resumed run may change
    has_previews: ClassVar[bool] = True
    guided_by_scale: ClassVar[bool] = False          # guided by a bare `scale` option (no denoiser to wrap)
    evaluates_test_examples: ClassVar[bool] = False  # evaluate(n) scores n test examples, not n samples

    def __init__(self, cfg, config, data: DataFormat, device: torch.device,
                 references: Mapping[str, Family] | None = None, network_config: dict | None = None):
        """cfg: the run's TrainConfig; config: its family section (a `Config`); data: the
        format of its dataset; references: the runs it builds on, loaded; network_config:
        the network's whole config (a saved run's), else derived from cfg and the data."""
        self.cfg, self.config, self.data, self.device = cfg, config, data, torch.device(device)
        self.references = dict(references or {})
        self.step = 0                         # a loaded run: the step of its checkpoint
        self.adversary = None                 # a second player (see the module docstring)
        self.train_data: ArrayDataset | None = None

    # --- the settings ---------------------------------------------------------------
    @classmethod
    def check(cls, cfg, config) -> None:
        """Raise ValueError naming what is wrong with this family's part of a config: the
        network kind, the type of every setting, the range of every number (`ranges`)."""
        if cls.networks and cfg.model not in cls.networks:
            raise ValueError(f"family {cls.name!r} trains model in {list(cls.networks)}, not {cfg.model!r}")
        check_types(config)
        check_ranges(config, cls.ranges)

    @classmethod
    def reference_paths(cls, config, training: bool) -> dict[str, str]:
        """The other runs this one builds on, by role: {role: run directory}.  `training`:
        also those needed only to start training (reflow's teacher)."""
        return {}

    @classmethod
    def missing_reference(cls, role: str, path: str) -> str:
        """What to say when the run of `role` does not exist at `path`."""
        return f"the {role} run {path} does not exist"

    @classmethod
    def kept_references(cls, config) -> dict[str, str]:
        """The references whose weights a run keeps a copy of (RUN/references/<role>.safetensors),
        so that it loads after they move: by default every one it samples through."""
        return cls.reference_paths(config, training=False)

    def _build(self, kind: str, network_config: dict) -> nn.Module:
        from ..models import build_model

        return build_model(kind, **network_config).to(self.device)

    # --- training -------------------------------------------------------------------
    def prepare(self, data: ArrayDataset, context: Context) -> None:
        """What training adds to the built family: the training data and anything derived
        from it (encoded latents, captions, data-dependent initialisation, ...)."""
        self.train_data, self.context = data, context

    @property
    def uses_labels(self) -> bool:
        """Whether a batch carries the examples' labels."""
        return False

    def training_data(self) -> tuple[Tensor, Tensor | None]:
        """The training examples (N, ...) and labels (N,) or None, on the CPU; the loop
        moves them to the device once."""
        data = self.train_data
        return data.data, data.labels if self.uses_labels else None

    def draw(self, n: int, generator: torch.Generator) -> Draw:
        raise NotImplementedError

    def loss(self, forward: nn.Module, batch: Batch, draw: Draw, step: int) -> Loss:
        raise NotImplementedError

    def after_micro_batch(self, draw: Draw, out: Loss) -> None:
        """Called after each micro-batch's backward pass."""

    def logged_terms(self, terms: dict) -> dict[str, float]:
        """The named parts of the loss that go into metrics.jsonl."""
        return {}

    def active_adversary(self, step: int):
        """`adversary` where optimizer step `step` trains it, else None."""
        return self.adversary if self.adversary is not None and self.adversary.active(step) else None

    def checkpoint(self, ema) -> tuple[dict[str, dict[str, Tensor]], dict[str, Any]]:
        """(tensor groups, JSON state) a checkpoint holds beyond weights, EMA and optimizer."""
        tensors, state = {}, {}
        if self.adversary is not None:
            tensors, state = self.adversary.checkpoint()
        return tensors, state

    def restore(self, tensors: dict, state: dict) -> None:
        """Read back what `checkpoint` wrote (training resumes)."""
        if self.adversary is not None:
            self.adversary.load(tensors, state)

    def restore_loaded(self, state: dict) -> None:
        """What a loaded (inference) run reads from its checkpoint's state beyond weights."""

    def frozen_names(self) -> list[str]:
        """The keys of `model.state_dict()` that a reference provides and checkpoints leave
        out (a LoRA run's base weights, frozen): the built family already holds them, and a
        checkpoint must lack exactly these (`training.loading.with_frozen`).  Default: none."""
        return []

    def saved(self, run_dir: Path, step: int, ema) -> None:
        """Called on rank 0 after checkpoint `step` is committed: files the family keeps
        beside its checkpoints (a LoRA run's adapter in peft's layout)."""

    # --- previews -------------------------------------------------------------------
    def preview(self, n: int) -> Tensor:
        """n samples (or reconstructions) in data space, for the training run's previews;
        called with the EMA weights applied and the network in eval mode."""
        raise NotImplementedError

    def write_preview(self, x: Tensor, path: Path, step: int) -> Path:
        from ..viz import image_grid, scatter_grid

        if self.data.kind == "image":
            return image_grid(x, path)
        return scatter_grid([(f"step {step}", x)], path, truth=self.train_data.data[:2000])

    # --- inference ------------------------------------------------------------------
    def generate(self, n: int, *args, **options):
        raise ValueError(f"a {self.name} run does not sample")

    def evaluate(self, n: int | None = None, **options) -> dict:
        """Scores of the run as a dict; n: samples or test examples (None: the family's default)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.model} on {self.data.name}, step {self.step})"


FAMILIES: dict[str, type[Family]] = {}


def register(family: type[Family]) -> type[Family]:
    """Make `family` available by its name (a class decorator)."""
    if not family.name or family.name in FAMILIES:
        raise ValueError(f"family name {family.name!r} is empty or taken")
    FAMILIES[family.name] = family
    return family


def checked_process(config):
    """The process a family's section names (`process`, `process_config`), built to check it:
    a ValueError names an unknown process or an option it does not take."""
    from ..process import make_process

    try:
        return make_process(config.process, **config.process_config)
    except ValueError as e:
        raise ValueError(f"process={config.process!r}, process_config={config.process_config}: {e}") from None


def get_family(name: str) -> type[Family]:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; valid: {sorted(FAMILIES)}")
    return FAMILIES[name]


def refuse_extras(run, nll: int = 0, text_accuracy: int = 0, denoising_error: int = 0) -> None:
    """Evaluation options that need a density or a denoiser, refused by name."""
    if nll:
        raise ValueError(f"a {run.name} run has no density: --nll needs a normalizing flow, diffusion, score or "
                         "flow-matching run")
    if text_accuracy:
        raise ValueError("text accuracy needs a text-conditioned run (text_encoder=tiny|minilm|tiny+minilm)")
    if denoising_error:
        raise ValueError(f"the denoising error needs a diffusion, score or flow-matching run, not a {run.name} run")


# --- the sizes of sampling and evaluation ---------------------------------------------------
SAMPLE_CHUNK = 1000  # samples drawn at once: a larger count is drawn in chunks, the k-th seeded seed + k


def spread(n: int, total: int) -> Tensor:
    """n indices (n,) int64 spread evenly over range(total), first and last included (n = 1: the first):
    the test examples an evaluation scores (sorted by class on mnist5k, so every class comes up)."""
    return torch.linspace(0, total - 1, n).round().long()


def sample_chunks(n: int, seed: int, size: int | None = None) -> list[tuple[slice, int]]:
    """The rows and the seed of each chunk of n samples, `size` at a time (default
    SAMPLE_CHUNK, read at the call): seed + k for the k-th, so a count of at most `size` is
    one draw with `seed`, exactly as before chunks existed."""
    size = size or SAMPLE_CHUNK
    return [(slice(start, min(start + size, n)), seed + k) for k, start in enumerate(range(0, n, size))]


def check_sample_count(data: DataFormat, n, trajectory: bool = False, key: str = "n") -> int:
    """n samples of a run on `data`: an integer >= 1 whose samples fit in memory; a
    trajectory (every step of every sample) only within one chunk."""
    n = check_count(key, n)
    check_fits(key, n, tuple(data.shape), "samples")
    if trajectory and n > SAMPLE_CHUNK:
        raise ValueError(f"{key}={n}: a trajectory keeps every step of every sample; it is drawn for at most "
                         f"{SAMPLE_CHUNK} samples")
    return n


def held_out_count(data: DataFormat) -> tuple[int, str] | None:
    """(how many, of what) test examples `data`'s dataset has; None where unknown (the
    registry knows its datasets' sizes)."""
    from ..data import DATASETS

    spec = DATASETS.get(data.name)
    return (spec.test_size, f"the {spec.name} test split") if spec is not None else None


def check_test_count(data: DataFormat, key: str, n, minimum: int = 1) -> int:
    """A count of test examples: an integer >= minimum (0: off), at most the test split."""
    return check_count(key, n, minimum, held_out_count(data), " (0: off)" if minimum == 0 else "")


EVAL_SAMPLES = 1000  # evaluate's default n (a family that scores test examples: all of them)


def check_eval_counts(family, data: DataFormat, n, nll=0, text_accuracy=0, denoising_error=0,
                      key: str = "n") -> int:
    """The counts of `family.evaluate` on `data`, checked before anything is sampled: n >= 1
    -- test examples where the family scores those (`evaluates_test_examples`) and on toys,
    whose sample quality compares n samples with n test points; else samples --, nll and
    denoising_error (test examples) and text_accuracy (samples per phrasing) >= 0, 0: off.
    Returns n; None is the default, EVAL_SAMPLES or the whole test split.  `key`: the name
    of n in the messages."""
    held_out = held_out_count(data)
    if n is None:
        n = held_out[0] if family.evaluates_test_examples and held_out is not None else EVAL_SAMPLES
    if family.evaluates_test_examples or data.kind == "toy":
        check_test_count(data, key, n)
    else:
        check_sample_count(data, n, key=key)
    check_test_count(data, "nll", nll, minimum=0)
    check_test_count(data, "denoising_error", denoising_error, minimum=0)
    check_count("text_accuracy", text_accuracy, 0, note=" (0: off)")
    check_fits("text_accuracy", text_accuracy, tuple(data.shape), "samples per phrasing")
    return n
