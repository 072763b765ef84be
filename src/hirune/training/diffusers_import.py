"""`hirune import DIR --out RUN`: a diffusers model folder as a hirune run.

    hirune import ./ddpm-folder --out runs/imported     (offline: local folders only)
    run = load_imported("runs/imported"); run.denoiser, run.process, run.model

DIR is a model folder (config.json with `_class_name`) or a pipeline folder
(model_index.json naming `unet` or `transformer`); the scheduler config is read from
DIR/scheduler/, DIR/../scheduler/ or DIR itself (scheduler_config.json).  Supported classes:
SUPPORTED_CLASSES; anything else is a ValueError naming them.

What maps to what:
* Network: `diffusers_network.DiffusersNetwork` (t passed as diffusers' integer steps).
* Process: `DiscreteVP(betas=scheduler.betas)`: diffusers' own betas (its float32 values, any
  beta_schedule, rescaled or not), T = num_train_timesteps.
* prediction_type epsilon | sample | v_prediction -> eps | x0 | v; variance_type
  learned_range / learned -> learned variance (hirune reads v in [-1, 1] as learned_range;
  "learned" (log variance) is refused).  clip_sample -> clip_x0 = (-range, range); hirune
  then makes eps consistent with the clipped x0 (diffusers' use_clipped_model_output=True).

The run directory: RUN/diffusers/{unet|transformer, scheduler} (the folders, saved again) and
RUN/imported.json (this module's description).  `hirune sample` does not read it yet: the
light loader builds networks by model kind from models/ (a `diffusers` model kind there is what would move).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..process import Denoiser, DiscreteVP
from .diffusers_network import NETWORK_CLASSES, DiffusersNetwork

SUPPORTED_CLASSES = NETWORK_CLASSES
FORMAT = "hirune-diffusers-import-1"
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
PIPELINE_PARTS = ("unet", "transformer")


def model_folder(path: str | Path) -> Path:
    """The folder holding the network's config.json: `path`, or its unet/ or transformer/."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder (a diffusers model or pipeline folder, saved with "
                                "save_pretrained)")
    if (path / "model_index.json").is_file():
        for part in PIPELINE_PARTS:
            if (path / part / "config.json").is_file():
                return path / part
        raise ValueError(f"the pipeline folder {path} has no {' or '.join(PIPELINE_PARTS)}/ network; "
                         f"supported classes: {list(SUPPORTED_CLASSES)}")
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json (nor model_index.json): not a diffusers folder")
    return path


def network_class(folder: Path) -> str:
    """The folder's `_class_name`; ValueError naming SUPPORTED_CLASSES if not one of them."""
    name = json.loads((folder / "config.json").read_text()).get("_class_name")
    if name not in SUPPORTED_CLASSES:
        raise ValueError(f"{folder} holds a diffusers {name!r}; supported classes: {list(SUPPORTED_CLASSES)}")
    return name


def scheduler_config(folder: Path) -> dict:
    """The scheduler config next to the network (module docstring); ValueError if none."""
    for where in (folder / "scheduler", folder.parent / "scheduler", folder):
        if (where / "scheduler_config.json").is_file():
            return json.loads((where / "scheduler_config.json").read_text())
    raise ValueError(f"no scheduler_config.json in {folder}/scheduler, {folder.parent}/scheduler or {folder}: "
                     "the process (betas, prediction type) comes from it")


def scheduler_process(config: dict) -> tuple[DiscreteVP, str, bool, tuple[float, float] | None]:
    """(process, prediction, learned variance, clip_x0) of a diffusers scheduler config."""
    import diffusers

    scheduler = getattr(diffusers, config["_class_name"]).from_config(config)
    if not hasattr(scheduler, "betas"):
        raise ValueError(f"{config['_class_name']} has no betas (a discrete DDPM schedule is needed)")
    prediction = PREDICTIONS.get(config.get("prediction_type", "epsilon"))
    if prediction is None:
        raise ValueError(f"prediction_type {config['prediction_type']!r}; valid: {sorted(PREDICTIONS)}")
    variance = config.get("variance_type") or "fixed_small"
    if variance == "learned":
        raise ValueError("variance_type 'learned' (a log variance) is not hirune's; valid: fixed_small, "
                         "fixed_large, learned_range")
    bound = float(config.get("clip_sample_range", 1.0))
    if config.get("thresholding"):
        raise ValueError("dynamic thresholding in the scheduler config is not imported (hirune: --threshold)")
    process = DiscreteVP(betas=scheduler.betas.double())
    return process, prediction, variance == "learned_range", (-bound, bound) if config.get("clip_sample") else None


@dataclass
class ImportedRun:
    """A diffusers network as hirune sees a run: model (`DiffusersNetwork`), process,
    denoiser (what every sampler takes), sample_shape (C, H, W), num_classes."""

    model: DiffusersNetwork
    process: DiscreteVP
    denoiser: Denoiser
    sample_shape: tuple[int, int, int]
    num_classes: int | None


def open_diffusers(path: str | Path, device: str | torch.device = "cpu") -> ImportedRun:
    """The diffusers folder at `path` (or an imported run's) as an `ImportedRun` (eval mode)."""
    import diffusers

    folder = model_folder(path)
    kind = network_class(folder)
    process, prediction, learned, clip = scheduler_process(scheduler_config(folder))
    net = getattr(diffusers, kind).from_pretrained(folder, local_files_only=True).to(device).eval()
    model = DiffusersNetwork(net)
    c = net.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    denoiser = Denoiser(model, process, prediction, learned_variance=learned, clip_x0=clip)
    return ImportedRun(model, process, denoiser, (c.in_channels, size, size), model.num_classes)


def import_diffusers(path: str | Path, out: str | Path) -> Path:
    """Check the folder at `path` (it must open: `open_diffusers`) and write it as the run
    directory `out` (module docstring).  Returns `out`."""
    run = open_diffusers(path)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out")
    part = "unet" if run.model.kind == "UNet2DModel" else "transformer"
    run.model.net.save_pretrained(out / "diffusers" / part)
    (out / "diffusers" / "scheduler").mkdir(parents=True, exist_ok=True)
    config = scheduler_config(model_folder(path))
    (out / "diffusers" / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "diffusers" / "model_index.json").write_text(json.dumps({"_class_name": "hirune-import",
                                                                    part: ["diffusers", run.model.kind]}) + "\n")
    meta = {"format": FORMAT, "class": run.model.kind, "source": str(path), "T": run.process.T,
            "prediction": run.denoiser.prediction, "learned_variance": run.denoiser.learned_variance,
            "clip_x0": run.denoiser.clip_x0, "sample_shape": list(run.sample_shape)}
    (out / "imported.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_imported(run_dir: str | Path, device: str | torch.device = "cpu") -> ImportedRun:
    """A run directory written by `import_diffusers`, as an `ImportedRun`."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "imported.json"
    if not meta_path.is_file() or json.loads(meta_path.read_text()).get("format") != FORMAT:
        raise ValueError(f"{run_dir} is not a run written by `hirune import` (no {FORMAT} imported.json)")
    return open_diffusers(run_dir / "diffusers", device)


def autoencoder_from_diffusers(path: str | Path) -> tuple[torch.nn.Module, float]:
    """(hirune KLAutoencoder, scaling_factor) of a diffusers AutoencoderKL folder: the same
    architecture built from its config, the weights under hirune's names
    (`diffusers_names.diffusers_to_autoencoder`).  ValueError for another class or for a
    layout hirune's autoencoder does not have (diffusers' GroupNorm count differing from
    hirune's `norm_groups` of a width)."""
    import diffusers

    from ..models import build_model
    from ..nn import norm_groups
    from .diffusers_names import diffusers_to_autoencoder

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a diffusers model folder")
    c = json.loads((folder / "config.json").read_text())
    if c.get("_class_name") != "AutoencoderKL":
        raise ValueError(f"{folder} holds a diffusers {c.get('_class_name')!r}; valid: ['AutoencoderKL']")
    widths = list(c["block_out_channels"])
    if any(w % widths[0] for w in widths) or any(norm_groups(w) != c["norm_num_groups"] for w in widths):
        raise ValueError(f"AutoencoderKL widths {widths} with norm_num_groups={c['norm_num_groups']}: hirune's "
                         "autoencoder needs multiples of the first width, each with that many GroupNorm groups")
    theirs = diffusers.AutoencoderKL.from_pretrained(folder, local_files_only=True)
    model = build_model("kl_autoencoder", in_channels=c["in_channels"], out_channels=c["out_channels"],
                        channels=widths[0], channel_mult=tuple(w // widths[0] for w in widths),
                        num_res_blocks=c["layers_per_block"], z_channels=c["latent_channels"],
                        mid_attention=c.get("mid_block_add_attention", True))
    names = list(model.state_dict())
    model.load_state_dict(diffusers_to_autoencoder(theirs.state_dict(), names, c["layers_per_block"]))
    return model.eval(), float(c.get("scaling_factor", 1.0))
