"""`hirune import DIR --out RUN`: a diffusers model folder as an ordinary hirune run.

    hirune import ./ddpm-folder --out runs/imported --dataset digits   (offline: local folders only)
    hirune sample runs/imported --sampler ddim        (every sampler; invert, edit, eval, nll too)
    hirune train finetune runs/imported               (trained on in hirune's loop; lora too)
    run = load("runs/imported"); run.denoiser, run.process, run.model.net

DIR is a model folder (config.json with `_class_name`) or a pipeline folder
(model_index.json naming `unet` or `transformer`).  Supported classes: SUPPORTED_CLASSES;
anything else is a ValueError naming them.  The run is what training would have written:
RUN/config.json and one checkpoint (step 0) whose model weights are the folder's (no EMA:
the weights are the weights), so `training.loading.load` and every command read it as any
run, never asking whether it was imported (the checkpoint's state says where it came from,
"imported_from").

What maps to what:
* UNet2DModel / DiTTransformer2DModel: family diffusion, model kind "diffusers"
  (`models.diffusers`: the class and its config.json; t passed as diffusers' integer steps).
  The scheduler config is read from DIR/scheduler/, DIR/../scheduler/ or DIR itself:
  process "ddpm" with process_config {"betas": diffusers' own betas} (its float32 values, any
  beta_schedule, rescaled or not), T = num_train_timesteps; prediction_type epsilon | sample |
  v_prediction -> eps | x0 | v; variance_type learned_range -> objective "hybrid" (learned
  variance; "learned", a log variance, is refused); clip_sample (range 1) -> clip_x0, and
  hirune then makes eps consistent with the clipped x0 (diffusers' use_clipped_model_output=True).
  Labels: UNet2DModel's num_class_embeds, DiT's num_embeds_ada_norm -> class_conditional.
* AutoencoderKL: family autoencoder, model kl_autoencoder (`autoencoder_from_diffusers`: the
  same architecture, the weights under hirune's names); its scaling_factor is the latent
  scale factor (`latent_stats`), so a latent diffusion run names it as its first stage
  (autoencoder=RUN).
* A latent pipeline (DiTPipeline: transformer/ with vae/ beside it): the diffusion run on the
  images the autoencoder decodes to (f = 2^(levels - 1) times the transformer's sample size), its
  vae/ imported as above and kept as RUN/references/first_stage.safetensors (what a latent
  diffusion run keeps of its autoencoder), named by `autoencoder`: samples come out decoded.
* The data: `dataset` names the dataset of the network's images (its shape must be the
  network's; class-conditional networks need its number of classes): then eval, nll, invert
  test:N and latent diffusion on it work.  Without one the run's data are NO_DATASET of the
  network's shape (sampling and inverting image files work; eval names the valid datasets).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..models.diffusers import NETWORK_CLASSES, DiffusersConfig, public_config
from .config import TrainConfig

SUPPORTED_CLASSES = (*NETWORK_CLASSES, "AutoencoderKL")
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
PIPELINE_PARTS = ("unet", "transformer")
NO_DATASET = "none (hirune import --dataset NAME)"


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


def scheduler_settings(config: dict) -> dict:
    """The diffusion family's settings (process, prediction, objective, clip_x0) of a diffusers
    scheduler config (module docstring); ValueError for what hirune does not have."""
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
    if config.get("thresholding"):
        raise ValueError("dynamic thresholding in the scheduler config is not imported (hirune: --threshold)")
    clip = bool(config.get("clip_sample"))
    if clip and float(config.get("clip_sample_range", 1.0)) != 1.0:
        raise ValueError(f"clip_sample_range={config['clip_sample_range']}: hirune clips x0 to [-1, 1] (clip_x0); "
                         "valid: 1.0, or clip_sample false")
    return {"process": "ddpm", "process_config": {"betas": scheduler.betas.double().tolist()},
            "prediction": prediction, "objective": "hybrid" if variance == "learned_range" else "regression",
            "clip_x0": clip}


def data_for(dataset: str | None, shape: tuple[int, ...], num_classes: int, any_size: bool = False):
    """The run's `DataFormat`: the dataset's, checked against the network (module docstring;
    `any_size`: only the channels, a convolutional autoencoder takes any H, W), or NO_DATASET
    of its shape (8-bit images)."""
    from ..data import DataFormat, data_format

    if not dataset:
        return DataFormat(NO_DATASET, "image", tuple(shape), num_classes, 256)
    fmt = data_format(dataset)  # an unknown name: ValueError naming the valid ones
    fits = fmt.shape[0] == shape[0] if any_size else tuple(fmt.shape) == tuple(shape)
    if fmt.kind != "image" or not fits:
        want = f"{shape[0]}-channel" if any_size else f"{tuple(shape)}"
        raise ValueError(f"dataset={dataset!r} holds {fmt.kind} examples of shape {tuple(fmt.shape)}, the network "
                         f"takes {want} images; valid: a dataset of {want} images, or none")
    if num_classes and fmt.num_classes != num_classes:
        raise ValueError(f"the network embeds {num_classes} classes, dataset={dataset!r} has {fmt.num_classes}; "
                         "valid: a dataset with as many classes, or none")
    return fmt


def denoiser_run(folder: Path, kind: str, dataset: str | None) -> tuple[dict, dict, dict, object, Path | None]:
    """(TrainConfig values, checkpoint weights, model config, data format, the AutoencoderKL
    folder of a latent pipeline or None) of a UNet2DModel or DiTTransformer2DModel folder."""
    import diffusers

    settings = scheduler_settings(scheduler_config(folder))
    net = getattr(diffusers, kind).from_pretrained(folder, local_files_only=True)
    network = DiffusersConfig(kind, public_config(net.config))
    shape, vae = network.sample_shape, folder.parent / "vae"
    if (vae / "config.json").is_file():  # a latent pipeline (DiTPipeline): the data are the autoencoder's images
        c = json.loads((vae / "config.json").read_text())
        f = 2 ** (len(c["block_out_channels"]) - 1)
        shape = (c["in_channels"], shape[1] * f, shape[2] * f)
    else:
        vae = None
    data = data_for(dataset, shape, network.num_classes)
    values = dict(family="diffusion", model="diffusers", model_config=dataclasses.asdict(network),
                  class_conditional=bool(network.num_classes), **settings)
    return values, {f"net.{k}": v for k, v in net.state_dict().items()}, dataclasses.asdict(network), data, vae


def autoencoder_run(folder: Path, dataset: str | None) -> tuple[dict, dict, dict, object, dict]:
    """(TrainConfig values, weights, model config, data format, latent statistics) of an
    AutoencoderKL folder."""
    model, scale = autoencoder_from_diffusers(folder)
    c = json.loads((folder / "config.json").read_text())
    size = c.get("sample_size") or 32
    shape = (c["in_channels"], *((size, size) if isinstance(size, int) else size))
    data = data_for(dataset, shape, 0, any_size=True)
    config = dataclasses.asdict(model.config)
    values = dict(family="autoencoder", model="kl_autoencoder", model_config=config)
    return values, model.state_dict(), config, data, {"scale_factor": scale}


def write_run(out: Path, values: dict, weights: dict, model_config: dict, data, state: dict) -> None:
    """RUN/config.json and its one checkpoint (step 0: `weights` as the model, no EMA)."""
    from ..checkpoint import save_checkpoint
    from .loop import write_config

    cfg = TrainConfig.from_dict({**values, "dataset": data.name, "out": str(out)})
    state = {"config": cfg.identity(), "run_config": cfg.to_dict(), "model_config": model_config,
             "data": data.to_dict(), **state}
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, cfg)
    save_checkpoint(out, 0, {"model": weights, "ema": {}}, state)


def import_diffusers(path: str | Path, out: str | Path, dataset: str | None = None) -> Path:
    """Write the diffusers folder at `path` as the run directory `out` (new or empty; see the
    module docstring), its data `dataset` (a dataset name or path; None: NO_DATASET).  A latent
    pipeline's vae/ becomes the run's first stage, kept in RUN/references/ as any latent
    diffusion run keeps its autoencoder.  Returns `out`."""
    import tempfile

    from .export import export_weights
    from .loading import REFERENCES

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another --out")
    folder = model_folder(path)
    kind = network_class(folder)
    source = {"imported_from": {"folder": str(folder), "class": kind}}
    if kind == "AutoencoderKL":
        values, weights, model_config, data, stats = autoencoder_run(folder, dataset)
        write_run(out, values, weights, model_config, data, {**source, "latent_stats": stats})
        return out
    values, weights, model_config, data, vae = denoiser_run(folder, kind, dataset)
    if vae is not None:  # the first stage: an autoencoder run of the same data, exported into references/
        first = out.resolve() / REFERENCES / "first_stage.safetensors"
        ae_values, ae_weights, ae_config, _, stats = autoencoder_run(vae, dataset)
        with tempfile.TemporaryDirectory() as tmp:
            ae_source = {"imported_from": {"folder": str(vae), "class": "AutoencoderKL"}, "latent_stats": stats}
            write_run(Path(tmp), ae_values, ae_weights, ae_config, data, ae_source)
            export_weights(tmp, first)
        values["autoencoder"] = str(first)
    write_run(out, values, weights, model_config, data, source)
    return out


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
