"""CogVideoX in miniature (Yang et al. 2024, secs. 2.2-3.1): text to video on the moving digits, and
its ablations, each trained here at the budget.

The expert transformer (`cogvideox-moving-mnist5k`: expert adaptive LayerNorm for text and video,
3D RoPE, explicit uniform times) on the latents of the 3D causal VAE (`video-vae-moving-mnist5k`,
trained first), against its ablations at the same steps, batch and CPU budget:

* shared  -- one adaptive LayerNorm for text and video (`experts=false`);
* learned -- a learned (t, y, x) position table instead of 3D RoPE (`positions=learned`);
* iid     -- i.i.d. uniform times instead of explicit uniform ones (`explicit_uniform=false`);
* packed  -- a quarter of each batch trained as one-frame images (frame packing, `image_share=0.25`).

The claim the paper makes and the digit scale can test: explicit uniform sampling -- the batch's
times spread over [0, T) in equal strata, one each -- steadies the loss (sec. 3.1, fig. 5: a
smoother loss curve).  Measured as the loss's step-to-step spread, the std of each step's loss
around its 25-step moving average over the second half of training.  Beside it, what the samples
show: n clips, the prompts naming every digit and motion in turn (DDIM 50 steps, classifier-free
guidance at 4), scored by the shipped evaluator (the named digit per frame, the share moving the
named way, temporal consistency, the per-frame Frechet distance), with the real test clips' row.
At tiny the transformer is a one-block network in pixel space (no VAE): the pipeline, not the claim.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from ..sampling import one_thread

VARIANTS = {
    "cogvideox": {},
    "shared": {"model_config": {"experts": False}},
    "learned": {"model_config": {"positions": "learned"}},
    "iid": {"explicit_uniform": False},
    "packed": {"image_share": 0.25},
}
# pixel space (no VAE), 4 x 4 patches: 9 x 8 x 8 video tokens, one block
TINY_NET = {"size": "tiny", "patch_size": 4, "hidden_size": 32, "depth": 1, "num_heads": 2}
# budget -> (VAE steps (0: pixel space), transformer steps, variants, clips scored, DDIM steps, CFG scale)
SIZES = {"tiny": (0, 6, ("cogvideox", "iid"), 4, 2, 4.0),
         "small": (300, 400, ("cogvideox", "iid"), 40, 50, 4.0),
         "full": (2000, 1500, tuple(VARIANTS), 200, 50, 4.0)}
MEASURES = {"frame_accuracy": "frame accuracy", "direction_accuracy": "direction",
            "temporal_consistency": "temporal consistency", "frechet_distance_frames": "per-frame FD"}


def loss_spread(run: Path, window: int = 25) -> float:
    """The std of each logged step's loss around its `window`-step moving average, over the second half
    of the run (RUN/metrics.jsonl, every step logged)."""
    losses = torch.tensor([json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
                           if '"loss"' in line], dtype=torch.float64)
    half = losses[len(losses) // 2:]
    window = max(1, min(window, len(half) - 1))
    kernel = torch.ones(1, 1, window, dtype=torch.float64) / window
    smooth = torch.nn.functional.conv1d(half[None, None], kernel)[0, 0]
    return float((half[window // 2: window // 2 + len(smooth)] - smooth).std())


def losses_of(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def train_run(out: Path, preset: str, steps: int, **extra) -> tuple[Path, float]:
    """`preset` trained `steps` steps into `out` (one checkpoint, at the end; no previews): (out, minutes)."""
    from ..systems.bases import train_base

    start = time.time()
    train_base(preset, out, steps, **extra)
    return out, (time.time() - start) / 60


def scored(x: torch.Tensor, labels, motions, frechet: bool) -> dict:
    """The shipped evaluator's measures of clips x against the digits and motions their prompts named,
    beside the real test clips' ("real_" keys).  frechet: `evaluation.video.video_report` (every test
    clip's frames through the evaluator, and the per-frame Frechet distance); else the measures alone,
    the real ones on as many test clips, every digit in turn (the tiny budget: seconds, not a minute)."""
    from ...data import load_dataset
    from ...evaluation.video import spread, video_measures, video_report

    if frechet:
        return video_report(x, labels, motions)
    measures, _ = video_measures(x, labels, motions)
    test = load_dataset("moving-mnist5k", "test")
    keep = spread(len(test), len(x))
    real, _ = video_measures(test.data[keep], test.labels[keep], test.attributes["direction"][keep])
    return {**measures, **{f"real_{k}": v for k, v in real.items()}}


def cogvideox_note(budget: str) -> Report:
    from ...training import load

    vae_steps, steps, variants, n, ddim, scale = SIZES[budget]
    results, clips, curves = {}, {}, {}
    with tempfile.TemporaryDirectory() as root, one_thread():
        root = Path(root)
        if vae_steps:
            vae, vae_minutes = train_run(root / "vae", "video-vae-moving-mnist5k", vae_steps, log_every=50)
            space = {"autoencoder": str(vae)}
        else:
            vae_minutes, space = 0.0, {"autoencoder": "", "model_config": TINY_NET, "batch_size": 4}
        for name in variants:
            extra = {**space, **VARIANTS[name]}
            extra["model_config"] = {**space.get("model_config", {}), **VARIANTS[name].get("model_config", {})}
            run_dir, minutes = train_run(root / name, "cogvideox-moving-mnist5k", steps, log_every=1, **extra)
            run = load(run_dir)
            guided = run.guide("cfg", scale) if scale != 1.0 else None
            prompts, labels, motions = run.prompts(n)          # every digit and motion in turn
            out, _ = run.generate(n, steps=ddim, seed=0, prompts=prompts, denoiser=guided, progress=False)
            metrics = scored(out.x, labels, motions, frechet=budget != "tiny")
            metrics.update(parameters=sum(p.numel() for p in run.model.parameters()), minutes=minutes,
                           loss_spread=loss_spread(run_dir))
            results[name], curves[name], clips[name] = metrics, losses_of(run_dir), out.x.float().clamp(-1, 1)
    real = {k: results[variants[0]].get(f"real_{k}", "") for k in MEASURES}
    real["frechet_distance_frames"] = results[variants[0]].get("frechet_real_vs_real_frames", "")
    rows = [[name, r["parameters"], r["minutes"], *(r.get(k, "") for k in MEASURES), r["loss_spread"]]
            for name, r in results.items()]
    rows.append(["real test clips", "", "", *real.values(), ""])
    notes = [f"{'pixel space, a one-block transformer' if not vae_steps else f'on a video VAE of {vae_steps} steps'}"
             f"; each variant {steps} steps of its preset's batch, one thread; scored on {n} clips, DDIM {ddim} steps, "
             f"CFG {scale:g}; chance: digit 0.1, direction 0.25; the real row's FD is training against test frames"
             + ("; no Frechet distance at tiny (it reads every test clip)" if budget == "tiny" else ""),
             "loss spread: the std of each step's loss around its 25-step moving average, second half of training"]
    if "iid" in results:
        ratio = results["iid"]["loss_spread"] / results["cogvideox"]["loss_spread"]
        notes.append(f"explicit uniform times against i.i.d. ones: loss spread "
                     f"{results['cogvideox']['loss_spread']:.4f} against {results['iid']['loss_spread']:.4f} "
                     f"(i.i.d. {ratio:.2f} times explicit's): "
                     + ("explicit uniform sampling steadies the loss, as CogVideoX claims" if ratio > 1.2 else
                        "NOT the steadier loss CogVideoX claims at this budget"))
    data = {"budget": budget, "vae_steps": vae_steps, "vae_minutes": vae_minutes, "steps": steps, "n": n,
            "ddim_steps": ddim, "scale": scale, "results": results, "losses": curves}

    def plot(path):
        from ...video_io import write_gif

        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, losses in curves.items():
            axes[0].plot(range(1, len(losses) + 1), losses, lw=0.6, label=f"{name} (spread "
                         f"{results[name]['loss_spread']:.4f})")
        axes[0].set(xlabel="step", ylabel="loss (every step)", yscale="log", title="the training loss")
        axes[0].legend(fontsize=7)
        rows = [torch.cat(list(c[0, 0]), 1) for c in clips.values()]   # each variant's first clip, frames in a row
        axes[1].imshow(torch.cat(rows, 0).numpy(), cmap="gray", vmin=-1, vmax=1)
        axes[1].set(xticks=[], yticks=[], title=f"first sample: {', '.join(clips)} (top to bottom)")
        save(fig, path)
        for name, x in clips.items():             # the samples as GIFs beside the figure
            write_gif(x[:20], Path(path).parent / f"cogvideox_{name}.gif")
    head = ["variant", "parameters", "train min", *MEASURES.values(), "loss spread"]
    return Report("cogvideox", f"CogVideoX and its ablations: {steps} steps each, {n} clips scored", head, rows,
                  notes, data, plot)
