"""The light loader: a trained run for inference, with nothing training needs.

    run = load("runs/ldm-mnist5k")           # a run directory, a checkpoint folder, or an export
    run.model, run.process, run.denoiser, run.text, run.first_stage
    out, labels = run.generate(16)

`load` reads the EMA weights (or the raw ones), the config and the data's format from the
checkpoint, builds the family object (network, process, denoiser, text encoder, first
stage) on the device and puts the weights in: no optimizer, no dataset, no encoding of
training data, no teacher.  The runs a run samples through (latent diffusion's first stage)
come from the copies in its directory (`references/`) where it has them, else from the
paths in its config.  Checkpoints of every version load (`config.upgrade`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ..checkpoint import CheckpointError
from ..families import Family, get_family
from .config import TrainConfig, upgrade

REFERENCES = "references"


def run_directory(path: str | Path) -> Path:
    """The run directory of a run directory, a checkpoint folder, or a file exported into one."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        return path
    if (path / "state.json").is_file():
        return path.parent.parent
    return path.parent


def reference_source(run_dir: str | Path, role: str, path: str) -> str:
    """Where to load a run's reference `role` from: its copy in the run directory, else `path`."""
    copy = Path(run_dir) / REFERENCES / f"{role}.safetensors"
    return str(copy) if copy.is_file() else path


def with_frozen(model, saved: dict, frozen, where) -> dict:
    """A checkpoint's model tensors completed with the state a reference provides (`frozen`:
    `Family.frozen_names`, taken from `model`, which holds it since it was built).  The
    checkpoint must lack exactly those keys; CheckpointError otherwise.  Nothing frozen:
    `saved` as it is (a strict load then checks it)."""
    frozen = set(frozen)
    if not frozen:
        return saved
    own = model.state_dict()
    missing = sorted(set(own) - set(saved) - frozen)
    doubled = sorted(set(saved) & frozen)
    if missing or doubled:
        raise CheckpointError(f"{where} should hold every tensor of the network but the {len(frozen)} its base run "
                              f"provides; " + (f"it lacks {missing[:4]}" if missing else "")
                              + ("; " if missing and doubled else "")
                              + (f"it holds base tensors {doubled[:4]}" if doubled else ""))
    return {**saved, **{k: own[k] for k in frozen}}


def saved_config(state: dict) -> TrainConfig:
    """The whole config of a checkpoint or export (of any version), for inference."""
    values = upgrade({**state.get("config", {}), **state.get("run_config", {})})
    return TrainConfig.from_dict({**values, "resume": False, "strategy": "ddp"})


def load(path: str | Path, *, use_ema: bool = True, device: str | torch.device = "cpu",
         isolate_rng: bool = True) -> Family:
    """The run at `path` (a run directory: its latest checkpoint; a checkpoint folder; a file
    written by `hirune export`), as its family object in eval mode on `device`, with the
    EMA weights (use_ema=False: the raw training weights) and `.step`, `.cfg`, `.run_dir`.

    Building the network draws its (discarded) initialisation from the global RNG seeded
    with the run's seed; `isolate_rng` (default) restores the caller's RNG state after."""
    from ..data import DataFormat, data_format
    from .export import checkpoint_weights

    weights, state = checkpoint_weights(path, use_ema)
    cfg = saved_config(state)
    cfg.device = str(device)
    config = cfg.section()
    family = get_family(cfg.family)
    run_dir = run_directory(path)
    references = {}
    for role, ref in family.reference_paths(config, training=False).items():
        source = reference_source(run_dir, role, ref)
        if not Path(source).exists():  # (a relative path is read from the working directory)
            raise FileNotFoundError(family.missing_reference(role, ref))
        references[role] = load(source, device=device, isolate_rng=isolate_rng)
    data = DataFormat.from_dict(state["data"]) if state.get("data") else data_format(cfg.dataset)
    with torch.random.fork_rng(devices=[]) if isolate_rng else nullcontext():
        torch.manual_seed(cfg.seed)
        run = family(cfg, config, data, torch.device(device), references, network_config=state.get("model_config"))
    weights = with_frozen(run.model, weights, run.frozen_names(), path)
    try:
        run.model.load_state_dict(weights)
    except RuntimeError as e:  # weights of another shape or name
        raise CheckpointError(f"{path} does not fit the network its config describes: "
                              f"{str(e).splitlines()[0]}") from e
    run.model.eval()
    run.step, run.run_dir = state["step"], run_dir
    run.restore_loaded(state)
    return run
