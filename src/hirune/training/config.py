"""The config of a run: what every family shares, plus the family's own section.

    TrainConfig(family="diffusion", dataset="mnist5k", model="unet", model_config={...},
                family_config={"process": "ddpm", "prediction": "v"}, steps=1000, ...)
    TrainConfig.from_dict({"dataset": "mnist5k", "model": "unet", "prediction": "v", ...})

`family` names a registered family (`hirune.families`); `family_config` holds the fields of
that family's `Config` dataclass (the diffusion family's process, objective, prediction,
conditioning, ...), checked by the family.  `from_dict` also takes those fields flat, beside
the shared ones, as presets and `hirune train key=value` give them, and every config written
by earlier versions of hirune (`upgrade`).  Plain data, saved as JSON in every run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..families import FAMILIES, get_family
from ..families.settings import Range, check_choices, check_ranges, check_types

# shared keys that may differ between a run and its resumption (families add their own)
RESUMABLE = ("steps", "log_every", "sample_every", "ckpt_every", "resume", "device", "eval_samples",
             "num_samples", "strategy", "sharded_checkpoints", "out", "recompute", "recompute_attention", "tp", "sp",
             "logger", "threads")


@dataclass
class TrainConfig:
    family: str = "diffusion"          # diffusion | normalizing_flow | autoencoder | classifier (hirune.families)
    dataset: str = "two_moons"
    model: str = "mlp"                 # the network kind (hirune.models), one the family trains
    model_config: dict = field(default_factory=dict)
    family_config: dict = field(default_factory=dict)   # the family's own section (its Config fields)
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
    ema_gamma: float = 0.0             # > 0: a power EMA of that exponent instead (training/ema.py)
    precision: str = "auto"            # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    compile: bool = False
    recompute: bool = False            # recompute each block's activations in backward (models.recompute)
    recompute_attention: bool = False  # recompute only attention's scores and softmax (selective recomputation)
    strategy: str = "ddp"              # with several processes (torchrun): ddp | zero1 | zero2 | zero3
    tp: int = 1                        # tensor parallelism: ranks that split each transformer block (dp x tp grid)
    sp: bool = False                   # sequence parallelism on top of tp: the residual stream split over tokens
    sharded_checkpoints: bool = True   # zero2/zero3: each rank writes its shards (torch.distributed.checkpoint)
    seed: int = 0
    log_every: int = 50
    logger: str = "jsonl"              # jsonl (metrics.jsonl, loss.png) | tensorboard (also RUN/tensorboard/)
    sample_every: int = 1000
    ckpt_every: int = 1000
    num_samples: int = 64              # samples in each preview grid
    eval_samples: int = 0              # `hirune train` then scores this many EMA samples (eval.json)
    out: str = "runs/default"
    device: str = "auto"
    threads: int = 0                   # CPU threads of torch while training; 0: torch's default (every core)
    resume: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from shared keys, `family_config`, and the family's keys given flat
        (they go into `family_config`); refuses keys that are neither, naming the valid ones."""
        values = dict(values)
        family = get_family(values.get("family", "diffusion"))
        shared = {f.name for f in dataclasses.fields(cls)}
        own = {f.name for f in dataclasses.fields(family.Config)}
        unknown = sorted(set(values) - shared - own)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown} for family {family.name!r}; valid: "
                             f"{sorted(shared - {'family_config'})} and the family's {sorted(own)}")
        section = {k: values.pop(k) for k in list(values) if k in own and k not in shared}
        values["family_config"] = {**section, **values.get("family_config", {})}
        return cls(**values)

    def section(self):
        """The family's section as its `Config` dataclass (defaults filled in)."""
        family = get_family(self.family)
        valid = [f.name for f in dataclasses.fields(family.Config)]
        unknown = sorted(set(self.family_config) - set(valid))
        if unknown:
            raise ValueError(f"unknown {self.family} setting(s) {unknown}; valid: {valid}")
        return family.Config(**self.family_config)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, the family's section complete (what config.json and checkpoints hold)."""
        return {**dataclasses.asdict(self), "family_config": dataclasses.asdict(self.section())}

    def identity(self) -> dict[str, Any]:
        """What makes a run this run: `to_dict` without the keys a resumption may change."""
        family = get_family(self.family)
        out = {k: v for k, v in self.to_dict().items() if k not in RESUMABLE}
        out["family_config"] = {k: v for k, v in out["family_config"].items() if k not in family.resumable}
        return out


# the valid values of the shared numbers (the families name theirs in `Family.ranges`)
RANGES = {
    "steps": Range(1, integer=True), "batch_size": Range(1, integer=True), "grad_accum": Range(1, integer=True),
    "lr": Range(0, low_open=True), "warmup": Range(0, integer=True), "min_lr_ratio": Range(0, 1),
    "weight_decay": Range(0), "ema_decay": Range(0, 1, high_open=True),
    "ema_gamma": Range(0, hint="0: the constant ema_decay; > 0: a power EMA, e.g. 6.94 (sigma_rel 0.10)"),
    # 0 as "no clipping" is not implemented: the trainer would clip every gradient to zero
    "grad_clip": Range(0, low_open=True, finite=False, hint="a positive max norm of the gradient; inf: no clipping"),
    "seed": Range(0, 2**64 - 1, integer=True), "log_every": Range(1, integer=True),
    "threads": Range(0, integer=True, hint="CPU threads; 0: torch's default (every core)"),
    "sample_every": Range(0, integer=True, hint="0: no previews"),
    "ckpt_every": Range(0, integer=True, hint="0: no checkpoints"),
    "num_samples": Range(1, integer=True), "eval_samples": Range(0, integer=True, hint="0: no evaluation"),
    "tp": Range(1, integer=True, hint="1: no tensor parallelism"),
}


def check_config(cfg: TrainConfig):
    """Every setting checked before anything is built: types, ranges and choices, the device,
    the dataset (it exists: a registered name, a folder or an .npz file), sizes whose arrays
    alone would not fit in memory, then the family's section (`Family.check`).  Raises
    ValueError (FileNotFoundError for a missing dataset) naming the key, the value and what
    is valid; returns the family's section."""
    from ..data import data_format, dataset_source, example_shape
    from ..data.sizes import check_fits
    from ..distributed.runtime import check_device
    from ..distributed.strategy import STRATEGIES
    from ..distributed.tensor_parallel import check_plan
    from .run_log import check_logger
    from ..families.base import check_eval_counts

    family = get_family(cfg.family)
    check_types(cfg)
    check_choices(cfg, {"lr_schedule": ("cosine", "constant"), "precision": ("auto", "fp32", "bf16", "fp16"),
                        "strategy": STRATEGIES})
    check_ranges(cfg, RANGES)
    if cfg.batch_size % cfg.grad_accum:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by grad_accum={cfg.grad_accum}")
    if cfg.eval_samples and not cfg.ckpt_every:
        raise ValueError(f"eval_samples={cfg.eval_samples} evaluates the last checkpoint, and ckpt_every=0 writes "
                         "none; give ckpt_every >= 1 or eval_samples=0")
    check_device(cfg.device)
    check_plan(cfg.model, cfg.tp, cfg.sp)
    check_logger(cfg.logger)
    shape = example_shape(cfg.dataset)  # FileNotFoundError / ValueError where there is no such dataset
    check_fits("batch_size", cfg.batch_size, shape, "examples")
    check_fits("num_samples", cfg.num_samples, shape, "samples")
    check_fits("eval_samples", cfg.eval_samples, shape, "samples")
    if cfg.eval_samples and dataset_source(cfg.dataset) == "registered":  # (the registry knows the test split)
        check_eval_counts(family, data_format(cfg.dataset), cfg.eval_samples, key="eval_samples")
    section = cfg.section()
    family.check(cfg, section)
    return section


# --- configs of earlier versions -----------------------------------------------------------
_OLD_FAMILY = {"nll": "normalizing_flow", "classifier": "classifier", "autoencoder": "autoencoder"}
_OLD_MODEL = {"flow": "normalizing_flow"}


def upgrade(values: dict[str, Any]) -> dict[str, Any]:
    """A saved config dict of any version in today's form.  Before families (hirune <=
    31bde1a) the config was flat: the family follows from `objective` (nll: normalizing
    flow, classifier, autoencoder; else diffusion), the family's keys move into
    `family_config` and keys the family does not have are dropped."""
    if "family" in values:
        return dict(values)
    family = _OLD_FAMILY.get(values.get("objective", "regression"), "diffusion")
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    own = {f.name for f in dataclasses.fields(get_family(family).Config)}
    out = {k: v for k, v in values.items() if k in shared}
    out.update(family=family, model=_OLD_MODEL.get(values.get("model"), values.get("model", "mlp")),
               family_config={k: v for k, v in values.items() if k in own})
    return out


# --- key=value ------------------------------------------------------------------------------
def field_types(family: str | None) -> dict[str, str]:
    """The type name of every key `hirune train` takes: the shared ones and `family`'s."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    if family is not None:
        types.update({f.name: f.type for f in dataclasses.fields(get_family(family).Config)})
    return types


def parse_overrides(items: list[str], family: str | None = "diffusion") -> dict[str, Any]:
    """key=value pairs, each value parsed to the type of its field (JSON for dicts and lists:
    model_config={"channels":64}); the keys are the shared ones and those of `family`."""
    types = field_types(family)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"expected key=value, got {item!r}")
        key, text = item.split("=", 1)
        if key not in types:
            raise ValueError(f"unknown config key {key!r} for family {family!r}; valid: {sorted(types)}")
        kind = types[key]
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                out[key] = text.lower() in ("true", "1", "yes")
            elif kind == "int":
                out[key] = int(text)
            elif kind == "float":
                out[key] = float(text)
            elif kind == "dict":
                out[key] = json.loads(text)
                if not isinstance(out[key], dict):
                    raise ValueError
            else:
                out[key] = text
        except ValueError:
            raise ValueError(f"config key {key!r} expects {kind}, got {text!r}") from None
    return out


__all__ = ["FAMILIES", "RESUMABLE", "TrainConfig", "check_config", "field_types", "parse_overrides", "upgrade"]
