"""How well an autoencoder reconstructs held-out images."""

from __future__ import annotations

import torch
from torch import nn


def reconstruction_report(model: nn.Module, dataset: str, n: int = 1000, latent_stats: dict | None = None) -> dict:
    """How well a KL or VQ autoencoder or a dVAE reconstructs the first n test images of
    `dataset`: MSE and PSNR (dB, peak-to-peak 2 for images in [-1, 1]; the mean of per-image
    PSNRs, as LDM reports it; for video clips the mean of per-clip PSNRs, and per frame index
    the mean over clips of that frame's PSNR, `psnr_db_per_frame`) through the posterior mean
    (KL) or the codes (VQ, dVAE: the argmax); the latent shape and scale factor
    (`latent_stats`, else measured on the training images); the mean KL in nats per image
    (KL) or the codebook usage and perplexity over all test positions (VQ, dVAE; a dVAE also
    its mean KL to the uniform prior in nats per position);
    for the digit sets, the evaluator's Frechet distance of the reconstructions to the test
    split (LDM's rFID with our evaluator) and its class accuracy on them (is the digit kept?)."""
    from ..data import load_dataset
    from ..metrics import EVALUATED, evaluate_images, psnr
    from ..models.quantize import perplexity
    from ..objectives.autoencoder import latent_statistics

    test = load_dataset(dataset, "test")
    x, labels = test.data[:n], test.labels[:n] if test.labels is not None else None
    vq = hasattr(model, "quantizer")
    dvae = hasattr(model, "codebook") and hasattr(model, "logits")  # `models/dvae.py`
    model = model.eval()
    batch = max(1, 256 // x.shape[2]) if x.dim() == 5 else 256  # about 256 frames at a time
    with torch.no_grad():
        out = torch.cat([model(chunk, sample=False).reconstruction for chunk in x.split(batch)]).float()
        if vq:
            indices = torch.cat([model.quantize(chunk).indices for chunk in x.split(batch)])
        elif dvae:
            from ..models.gumbel import kl_to_uniform

            logits = torch.cat([model.logits(chunk) for chunk in x.split(batch)])
            indices, kl_per_position = logits.argmax(1), kl_to_uniform(logits).double().mean()
        else:
            kl = torch.cat([model.encode(chunk).kl() for chunk in x.split(batch)])
    mse = (out.double() - x.double()).flatten(1).pow(2).mean(1)
    stats = latent_stats or latent_statistics(model, load_dataset(dataset, "train").data)
    report = {"examples": len(x), "mse": float(mse.mean()), "psnr_db": float(psnr(out, x).mean()),
              "latent_shape": list(model.latent_shape(tuple(x.shape[1:]))),
              "downsample_factor": model.config.downsample_factor, "scale_factor": stats["scale_factor"],
              "latent_channel_mean": stats["channel_mean"], "latent_channel_std": stats["channel_std"]}
    if x.dim() == 5:  # videos (N, C, T, H, W): psnr_db is the mean over clips, and per frame over clips
        report["psnr_db_per_frame"] = [float(psnr(out[:, :, t], x[:, :, t]).mean()) for t in range(x.shape[2])]
        report["time_compression"] = model.config.time_compression
    if vq or dvae:
        K = model.config.codebook_size
        used = int((torch.bincount(indices.flatten(), minlength=K) > 0).sum())
        report.update(codebook_size=K, codes_used=used, codebook_usage=used / K,
                      codebook_perplexity=float(perplexity(indices, K)))
        if dvae:
            report["kl_to_uniform_nats_per_position"] = float(kl_per_position)
    else:
        report["kl_nats"] = float(kl.mean())
    if dataset in EVALUATED:
        scores = evaluate_images(dataset, out, labels)
        report.update({f"reconstruction_{k}": v for k, v in scores.items() if k != "num_images"})
    return report
