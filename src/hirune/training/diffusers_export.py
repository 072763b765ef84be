"""`hirune export RUN --format diffusers`: a run as a folder diffusers loads offline.

    out/transformer/   DiTTransformer2DModel (config.json + diffusion_pytorch_model.safetensors)
    out/scheduler/     DDPMScheduler config of the run's discrete process
    out/vae/           AutoencoderKL, for a DiT on a KL autoencoder's latents
    out/model_index.json   DiTPipeline, for a class-conditional DiT on a KL autoencoder's latents
    out/hirune.json    where it came from (the run, its step)
  or, for a KL autoencoder run:
    out/               AutoencoderKL (scaling_factor = the run's latent scale factor)
  or, for a run `hirune import` wrote from a UNet2DModel / DiT folder (model kind "diffusers"):
    out/unet/ or out/transformer/, out/scheduler/   the network as it came, the run's process

What maps to what:

* Weights: `diffusers_names` (the same function under other names).
* Time.  hirune's network sees t * time_scale with t the integer step 0..T-1; diffusers
  feeds its integer timesteps unscaled, so only time_scale = 1 (T = 1000, the default) is
  exported.  diffusers' DiT block embeds t with frequencies exp(-ln(10^4) k / 127), DiT's
  code (and hirune) with exp(-ln(10^4) k / 128): diffusers' `downscale_freq_shift` = 1 is
  fixed in `CombinedTimestepLabelEmbeddings`, no config key sets it.  After
  `DiTTransformer2DModel.from_pretrained(out / "transformer")`, `use_dit_frequencies(model)`
  sets it to 0 in every block and the function is hirune's; without it the outputs differ
  (0.55 on the perturbed T/2 of tests/interop/test_export.py).
* LayerNorm eps: DiT's 1e-6 (`norm_eps`).  Learned sigma: out_channels = 2 C, (prediction,
  v in [-1, 1]) in both, diffusers' scheduler `variance_type="learned_range"` reads v as
  Improved DDPM does (frac = (v + 1) / 2), which is hirune's `Denoiser`.
* Scheduler: `trained_betas` = the process's betas (exact for every schedule), prediction
  eps | x0 | v -> epsilon | sample | v_prediction, clip_x0 -> clip_sample (range 1).
* An unconditional DiT gets diffusers' class table as zeros (call it with class_labels 0).

Refused, naming what is supported: other families and networks (flows, UNets, U-ViT), text
or micro-conditioned DiTs, qk-norm, an MLP ratio other than 4, continuous processes.
"""

from __future__ import annotations

import json
from pathlib import Path

from .diffusers_names import autoencoder_to_diffusers, dit_to_diffusers

SUPPORTED = ("a diffusion run of a DiT on a discrete (ddpm) process, pixels or KL-autoencoder latents",
             "a kl_autoencoder run", "a run written by `hirune import` (model 'diffusers')")
PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def unsupported(what: str) -> ValueError:
    return ValueError(f"{what} cannot be exported in diffusers' format; supported: " + "; ".join(SUPPORTED))


def use_dit_frequencies(transformer) -> None:
    """Make a loaded DiTTransformer2DModel embed time as DiT and hirune do: frequencies
    exp(-ln(10^4) k / 128) (`downscale_freq_shift` 0 in every block; see the module docstring)."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0


def dit_transformer(model):
    """diffusers' DiTTransformer2DModel with the function of hirune DiT `model` (after
    `use_dit_frequencies`), its weights copied in; float32, eval mode."""
    from diffusers import DiTTransformer2DModel

    c = model.config
    if c.context_dim or c.micro_conditions or c.word_vocab:
        raise unsupported("a text- or micro-conditioned DiT")
    if c.qk_norm or c.mlp_ratio != 4.0:
        raise unsupported(f"a DiT with qk_norm={c.qk_norm}, mlp_ratio={c.mlp_ratio} (diffusers: no qk norm, ratio 4)")
    if c.time_scale != 1.0:
        raise unsupported(f"a DiT with time_scale={c.time_scale} (diffusers feeds integer steps unscaled; T = 1000)")
    theirs = DiTTransformer2DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.hidden_size // c.num_heads,
        in_channels=c.in_channels, out_channels=c.output_channels, num_layers=c.depth, sample_size=c.image_size,
        patch_size=c.patch_size, num_embeds_ada_norm=c.num_classes or 1, norm_eps=1e-6)
    sd = {k: v.float() for k, v in model.state_dict().items()}
    theirs.load_state_dict(dit_to_diffusers(sd, c.depth, c.hidden_size), strict=True)
    return theirs.eval()


def autoencoder_kl(model, scaling_factor: float):
    """diffusers' AutoencoderKL with hirune KLAutoencoder `model`'s function and weights."""
    from diffusers import AutoencoderKL

    from ..nn import norm_groups

    c = model.config
    levels, widths = len(c.channel_mult), [c.channels * m for m in c.channel_mult]
    groups = {norm_groups(w) for w in widths}
    if len(groups) != 1:  # diffusers has one norm_num_groups for every GroupNorm
        raise unsupported(f"a KL autoencoder whose widths {widths} have GroupNorm groups {sorted(groups)} "
                          "(diffusers: one group count; widths that are multiples of 32)")
    theirs = AutoencoderKL(
        in_channels=c.in_channels, out_channels=c.out_channels or c.in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(widths), layers_per_block=c.num_res_blocks, norm_num_groups=groups.pop(),
        latent_channels=c.z_channels, mid_block_add_attention=c.mid_attention, scaling_factor=scaling_factor,
        sample_size=c.image_size or 32)
    sd = {k: v.float() for k, v in model.state_dict().items()}
    theirs.load_state_dict(autoencoder_to_diffusers(sd, c.num_res_blocks), strict=True)
    return theirs.eval()


def ddpm_scheduler(run):
    """diffusers' DDPMScheduler for the run's discrete process and prediction (module docstring)."""
    from diffusers import DDPMScheduler

    process, denoiser = run.process, run.denoiser
    if not getattr(process, "discrete", False):
        raise unsupported(f"a run on the continuous process {process!r}")
    if denoiser.prediction not in PREDICTION_TYPES:
        raise unsupported(f"a run predicting {denoiser.prediction!r} (diffusers: {sorted(PREDICTION_TYPES)})")
    clip = denoiser.clip_x0
    return DDPMScheduler(num_train_timesteps=process.T, trained_betas=process.betas.tolist(),
                         prediction_type=PREDICTION_TYPES[denoiser.prediction],
                         variance_type="learned_range" if denoiser.learned_variance else "fixed_small",
                         clip_sample=clip is not None, clip_sample_range=1.0)


def export_diffusers(run_path: str | Path, out: str | Path, use_ema: bool = True) -> Path:
    """Write the run at `run_path` as a diffusers folder at `out` (see the module docstring).
    Returns `out`.  ValueError for a run diffusers cannot express."""
    from .loading import load

    run = load(run_path, use_ema=use_ema)
    out = Path(out)
    if run.name == "autoencoder":
        if run.cfg.model != "kl_autoencoder":
            raise unsupported(f"an autoencoder run of model {run.cfg.model!r}")
        autoencoder_kl(run.model, float(run.latent_stats["scale_factor"])).save_pretrained(out)
        return out
    if run.name == "diffusion" and run.cfg.model == "diffusers":  # imported: back as it came
        part = "unet" if run.model.config.class_name == "UNet2DModel" else "transformer"
        run.model.net.save_pretrained(out / part)
        ddpm_scheduler(run).save_pretrained(out / "scheduler")
        (out / "hirune.json").write_text(json.dumps({"from": str(run_path), "step": run.step}) + "\n")
        return out
    if run.name != "diffusion" or run.cfg.model != "dit":
        raise unsupported(f"a {run.name} run of model {run.cfg.model!r}")
    transformer, scheduler = dit_transformer(run.model), ddpm_scheduler(run)
    first = getattr(run, "first_stage", None)
    if first is not None and not first.is_vq and run.model.config.num_classes:
        from diffusers import DiTPipeline

        vae = autoencoder_kl(first.model, first.scale)
        labels = {i: str(i) for i in range(run.model.config.num_classes)}
        DiTPipeline(transformer, vae, scheduler, id2label=labels).save_pretrained(out)
    else:
        transformer.save_pretrained(out / "transformer")
        scheduler.save_pretrained(out / "scheduler")
        if first is not None and not first.is_vq:
            autoencoder_kl(first.model, first.scale).save_pretrained(out / "vae")
    (out / "hirune.json").write_text(json.dumps({"from": str(run_path), "step": run.step}) + "\n")
    return out
