"""Fine-tuning a trained diffusion run: the settings `base`, `adapter` and `lora_*` of the
diffusion family.

    base=RUN               start from RUN (a trained diffusion run): its network config
                           replaces this run's, its EMA weights are copied in before training
    adapter=""             full fine-tuning: every weight trains, every checkpoint holds them all
    adapter="lora"         LoRA (`models.lora`, Hu et al. 2021): the base weights are frozen and
                           only low-rank adapters on `lora_targets` train, of rank `lora_rank`,
                           scale lora_alpha / lora_rank (alpha 0: the rank, scale 1), with
                           `lora_dropout` on their input

The base is a reference (role "base"), loaded light by the trainer and the loader, never
copied into the run: an adapter run's checkpoints hold only the adapter's tensors (model,
EMA, optimizer; `Family.frozen_names` names the base's), and the base's identity -- its
path, step and a fingerprint of its weights (`checkpoint.weights_fingerprint`) -- which
must still be the base's when the adapter is resumed or loaded.  At every checkpoint the
adapter's EMA tensors are also written in peft's layout, RUN/adapter/ (adapter_model.safetensors,
adapter_config.json with a "hirune" entry naming the base), which `PeftModel.from_pretrained`
reads and `hirune sample BASE --adapter RUN` applies.

AdamW steps only parameters with gradients, so weight decay never touches the frozen base;
the EMA keeps only the trainable parameters.  FSDP2's shards (strategy zero2 / zero3) are
refused with an adapter: a few small tensors gain nothing from sharding.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from ..checkpoint import CheckpointError, weights_fingerprint
from .settings import Range

ADAPTERS = ("", "lora")
RANGES = {"lora_rank": Range(1, integer=True), "lora_alpha": Range(0, hint="0: alpha = lora_rank, scale 1"),
          "lora_dropout": Range(0, 1, high_open=True)}
LORA_KEYS = ("lora_rank", "lora_alpha", "lora_targets", "lora_dropout")
# what the base's network reads and how its outputs are read: a fine-tuned run keeps them
SAME_AS_BASE = ("process", "process_config", "objective", "prediction", "class_conditional", "text_encoder",
                "autoencoder", "clip", "low_res")
ADAPTER_FOLDER = "adapter"


def check(cfg, config) -> None:
    """The settings, before anything is built: adapter among ADAPTERS; an adapter needs a
    base; the lora_* settings need adapter=lora; no FSDP2 shards with an adapter."""
    if config.adapter not in ADAPTERS:
        raise ValueError(f"adapter={config.adapter!r} is not valid; valid: {list(ADAPTERS)} ('': full fine-tuning)")
    if config.adapter and not config.base:
        raise ValueError(f"adapter={config.adapter!r} is not valid without base; valid: base=RUN, the trained "
                         "diffusion run the adapter adapts (e.g. `hirune train lora runs/vpred-mnist5k`)")
    defaults = type(config)()
    changed = [k for k in LORA_KEYS if getattr(config, k) != getattr(defaults, k)]
    if changed and config.adapter != "lora":
        raise ValueError(f"{', '.join(f'{k}={getattr(config, k)!r}' for k in changed)} is not valid with "
                         f"adapter={config.adapter!r}; valid: these settings with adapter='lora' (and base=RUN)")
    if config.adapter and cfg.strategy in ("zero2", "zero3"):
        raise ValueError(f"strategy={cfg.strategy!r} is not valid with adapter={config.adapter!r}: FSDP2 shards "
                         "gain nothing on a few small adapter tensors; valid: 'ddp' or 'zero1'")
    if config.base and config.reflow_from:
        raise ValueError("base= (fine-tuning) is not valid with reflow_from=; valid: one of them")


def partial(config) -> str:
    """What a run tuned from a base trains and saves alone, the base providing the rest: "adapter"
    (adapter=lora), "embedding" (textual inversion: placeholder=), or "" (every weight)."""
    return "adapter" if config.adapter == "lora" else "embedding" if config.placeholder else ""


def reference_paths(config, training: bool) -> dict[str, str]:
    """The base: to start training; a run that saves only a part (`partial`) also samples through it."""
    return {"base": config.base} if config.base and (training or partial(config)) else {}


def missing_reference(path: str) -> str:
    return (f"base run {path} does not exist (a relative path is read from the working directory); train it first "
            "(e.g. `hirune train vpred-mnist5k`), or run from the folder the path was given in")


# --- building ---------------------------------------------------------------------------
def network_config(run) -> dict:
    """The base's network config, which a fine-tuned run's network takes whole."""
    return dataclasses.asdict(run.references["base"].model.config)


def check_base(base, run) -> None:
    """The base must be a full (not adapter) run of the same family and network kind, on
    data of the same shape and classes (a family with `resizable_base`: the same examples at
    any registered resolution, `data.original_dataset`), with the same process, prediction
    and conditioning."""
    from ..data import original_dataset

    where = run.config.base
    if getattr(base, "name", None) != run.name:
        raise ValueError(f"base={where!r} is not valid: it is a {getattr(base, 'name', '?')} run; valid: a trained "
                         f"{run.name} run")
    if base.config.adapter:
        raise ValueError(f"base={where!r} is not valid: it is itself an adapter run (adapter="
                         f"{base.config.adapter!r}); valid: a run with full weights (its base, {base.config.base!r})")
    if base.cfg.model != run.cfg.model:
        raise ValueError(f"model={run.cfg.model!r} is not valid for base={where!r}; valid: {base.cfg.model!r}, the "
                         "base's network")
    resized = run.resizable_base and base.data.shape[0] == run.data.shape[0] and \
        original_dataset(base.data.name) == original_dataset(run.data.name)
    if (tuple(base.data.shape) != tuple(run.data.shape) and not resized) or \
            base.data.num_classes != run.data.num_classes:
        raise ValueError(f"dataset={run.data.name!r} (examples {tuple(run.data.shape)}, {run.data.num_classes} "
                         f"classes) is not valid for base={where!r}; valid: data of the base's shape "
                         f"{tuple(base.data.shape)} and {base.data.num_classes} classes (it was trained on "
                         f"{base.data.name})")
    differ = [k for k in SAME_AS_BASE if getattr(base.config, k) != getattr(run.config, k)]
    if differ:
        mine = ", ".join(f"{k}={getattr(run.config, k)!r}" for k in differ)
        theirs = ", ".join(f"{k}={getattr(base.config, k)!r}" for k in differ)
        raise ValueError(f"{mine} is not valid for base={where!r}; valid: the base's {theirs}")


def identity(base, path: str) -> dict:
    """What names a base: its path, its checkpoint's step and its weights' fingerprint."""
    return {"path": str(path), "step": int(base.step), "fingerprint": weights_fingerprint(base.model.state_dict())}


def attach(run) -> None:
    """Start `run`'s network (built from the base's config) from the base's EMA weights,
    bitwise; with adapter=lora, freeze them and add the adapter (`run.adapted`: its layers)."""
    from ..models import lora

    base = run.references["base"]
    check_base(base, run)
    run.model.load_state_dict(base.model.state_dict())
    run.base_identity = identity(base, run.config.base)
    if run.config.adapter == "lora":
        c = run.config
        run.adapted = lora.add_lora(run.model, c.lora_rank, c.lora_alpha or None, c.lora_targets, c.lora_dropout)


def frozen_names(run) -> list[str]:
    """An adapter run's model state that the base provides: every key but the adapters'."""
    if run.config.adapter != "lora":
        return []
    return [k for k in run.model.state_dict() if not _is_adapter_key(k)]


def _is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


# --- checkpoints -----------------------------------------------------------------------
def checkpoint_state(run) -> dict:
    base = getattr(run, "base_identity", None)
    return {"base": base} if base is not None else {}


def check_identity(run, state: dict) -> None:
    """An adapter or a learned word (`partial`) is resumed or loaded only on the base it was
    trained on: the same step and fingerprint (CheckpointError naming both otherwise)."""
    if partial(run.config):
        check_same_base(run, state, partial(run.config))


def check_same_base(run, state: dict, what: str) -> None:
    """The base a run's checkpoint `state` was trained on is the run's base now (step and
    weights fingerprint); a CheckpointError names both otherwise.  `what`: what was trained."""
    saved, now = state.get("base") or {}, run.base_identity
    if (saved.get("step"), saved.get("fingerprint")) != (now["step"], now["fingerprint"]):
        raise CheckpointError(f"this {what} was trained on the base {_describe(saved)}; the base is now "
                              f"{_describe(now)}: another checkpoint or other weights (point base= at the "
                              f"checkpoint folder it was trained on, or train the {what} again)")


def _describe(identity: dict) -> str:
    return f"{identity.get('path')} at step {identity.get('step')} (weights {identity.get('fingerprint')})"


def write_adapter(run, run_dir: Path, step: int, ema) -> Path | None:
    """RUN/adapter/: the adapter's EMA tensors in peft's layout (`models.lora.save_adapter`)."""
    from ..models import lora

    if run.config.adapter != "lora":
        return None
    with ema.applied(run.model):  # (copies: the state dict's tensors are the parameters, restored after)
        tensors = {k: v.detach().clone() for k, v in lora.lora_state_dict(run.model).items()}
    c, base = run.config, run.base_identity
    info = {"base": c.base, "base_step": base["step"], "base_fingerprint": base["fingerprint"], "step": step,
            "dataset": run.data.name, "network": run.cfg.model, "targets": c.lora_targets, "rank": c.lora_rank,
            "alpha": c.lora_alpha or c.lora_rank}
    return lora.save_adapter(Path(run_dir) / ADAPTER_FOLDER, run.model, hirune=info, tensors=tensors)


# --- sampling with adapters ----------------------------------------------------------------
def adapter_folder(path: str | Path) -> Path:
    """The adapter folder of an adapter run directory (RUN/adapter) or an adapter folder."""
    path = Path(path)
    if (path / ADAPTER_FOLDER / "adapter_config.json").is_file():
        return path / ADAPTER_FOLDER
    if (path / "adapter_config.json").is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"adapter {path} does not exist")
    raise ValueError(f"{path} is not valid as an adapter; valid: an adapter run's directory (with {ADAPTER_FOLDER}/) "
                     "or an adapter folder (adapter_config.json, adapter_model.safetensors)")


def use_adapters(run, adapters: list[tuple[str, float]], merge: bool = False) -> dict[str, float]:
    """Apply adapters to a loaded run for sampling: each (path, weight) -- an adapter run or
    folder trained on this run's base -- is added by name and all are made active at their
    weights (an adapter run keeps its own at 1 unless it is listed); `merge` folds them into
    the weights.  Returns {adapter name: weight}.  An adapter trained on another base
    (another fingerprint) is refused, naming both."""
    from ..models import lora

    own = getattr(run, "base_identity", None) if run.config.adapter == "lora" else None
    if not hasattr(run, "sampling_identity"):  # what this run's base is, before anything is added
        run.sampling_identity = own or {"path": str(getattr(run, "run_dir", "?")), "step": int(run.step),
                                        "fingerprint": weights_fingerprint(run.model.state_dict())}
    base = run.sampling_identity
    weights = {"default": 1.0} if own is not None else {}
    mine = (Path(run.run_dir) / ADAPTER_FOLDER).resolve() if own is not None else None
    for path, weight in adapters:
        folder = adapter_folder(path)
        if mine is not None and folder.resolve() == mine:
            weights["default"] = weight
            continue
        config, tensors, info = lora.read_adapter(folder)
        if info.get("base_fingerprint") != base["fingerprint"]:
            trained = {"path": info.get("base"), "step": info.get("base_step"),
                       "fingerprint": info.get("base_fingerprint")}
            raise ValueError(f"adapter {path} was trained on the base {_describe(trained)}, not on this run's "
                             f"{_describe(base)}")
        name = _free_name(run.model, Path(path).name)
        lora.add_saved_lora(run.model, config, tensors, name)
        weights[name] = weight
    if weights:
        lora.set_weights(run.model, weights)
        if merge:
            lora.merge(run.model)
    return weights


def _free_name(model, wanted: str) -> str:
    from ..models.lora import adapter_names

    stem = re.sub(r"\W", "_", wanted) or "adapter"
    name, k = stem, 1
    while name in adapter_names(model) or name == "default":
        k += 1
        name = f"{stem}_{k}"
    return name
