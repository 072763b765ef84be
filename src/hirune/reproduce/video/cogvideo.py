"""CogVideo in miniature (Hong et al. 2022, sec. 3): text to video as autoregression over image
tokens, started from a trained text-to-image model, against the same network from scratch.

The frames are a VQ tokenizer's codes, drawn one after another by a causal transformer whose spatial
channel is a trained dalle run's (the image model, on the still frames of the moving digits) and whose
temporal channel is new and gated at 0 (dual-channel attention: at the start every frame's logits are
the image model's).  The paper's claim measured: starting from the image model is what makes the
frames -- the same network with every weight drawn (`from_scratch`), trained the same steps, draws
worse frames (per-frame Frechet distance, the named digit read per frame).  Beside it: key frames at
gap 4 (5 frames), interpolated once at gap 2 (9 frames) and twice from gap 4 (17, recursive
interpolation by a second run, `cogvideo-interp-moving-mnist5k`), the direction and temporal
consistency of the clips, and the interpolation run fed real key frames.

Each is trained here at the budget, one run at a time: `vq-ae-moving-stills`, `dalle-moving-stills`
over its codes, then `cogvideo-moving-mnist5k` from it and from scratch, and the interpolation run.  n
clips a schedule, the prompts naming every digit and motion in turn, classifier-free guidance on the
logits, scored by `evaluation.video`.  At tiny the networks are a few-channel VQ and a one-block dalle
trained a few steps: the pipeline, not the claim.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from ..sampling import one_thread
from .progressive import measured, trained_family

VARIANTS = {"image": {}, "scratch": {"from_scratch": True}}
# (label, gap between key frames, interpolated down to gap 1)
SCHEDULES = (("5 key frames, gap 4", 4, False), ("gap 2, interpolated once", 2, True),
             ("gap 4, interpolated twice", 4, True))
# tiny: 4 x 4 codes a frame (f8), a quarter of the tokens the preset draws
TINY_VQ = {"size": "f8", "channels": 4, "channel_mult": [1, 1, 1, 1], "num_res_blocks": 1, "z_channels": 4,
           "codebook_size": 32, "codebook_update": "ema"}
TINY_DALLE = {"width": 16, "depth": 1, "heads": 2}
# budget -> (VQ steps, dalle steps, key-frame steps of each variant, interpolation steps, clips a schedule, CFG scale)
SIZES = {"tiny": (2, 2, 2, 2, 2, 3.0), "small": (200, 250, 50, 50, 20, 3.0),
         "full": (1000, 700, 240, 400, 200, 3.0)}
MEASURES = {"frame_accuracy": "frame accuracy", "direction_accuracy": "direction",
            "temporal_consistency": "temporal consistency", "frechet_distance_frames": "per-frame FD"}


def image_model(root: Path, budget: str) -> tuple[object, dict]:
    """The tokenizer and the dalle run on the still frames at the budget: (the dalle run's family, its
    run folder at `.run_dir`; minutes of each)."""
    vq_steps, dalle_steps, *_ = SIZES[budget]
    tiny = budget == "tiny"
    vq, _, vq_min = trained_family(root, "vq", "vq-ae-moving-stills", vq_steps,
                                   **({"model_config": TINY_VQ, "batch_size": 4} if tiny else {}))
    dalle, family, dalle_min = trained_family(root, "dalle", "dalle-moving-stills", dalle_steps, tokenizer=str(vq),
                                              **({"model_config": TINY_DALLE, "batch_size": 4} if tiny else {}))
    return dalle, family, {"vq": vq_min, "dalle": dalle_min}


def clips_scored(run, n: int, gap: int, interpolator, scale: float, frechet: bool) -> tuple[dict, torch.Tensor]:
    """n clips of a key-frame run at `gap` (interpolated to gap 1 by `interpolator`, or not), the prompts
    naming every digit and motion in turn: the evaluator's measures and the clips."""
    from ...data.video_captions import clip_prompts

    prompts, labels, motions = clip_prompts(n)
    extra = {"interpolator": interpolator} if interpolator is not None else {}
    out, _ = run.generate(n, prompts=prompts, gap=gap, scale=scale, seed=0, **extra)
    return {"frames": out.x.shape[2], **measured(out.x, labels, motions, frechet)}, out.x


def cogvideo_note(budget: str) -> Report:
    *_, key_steps, interp_steps, n, scale = SIZES[budget]
    frechet, tiny = budget != "tiny", budget == "tiny"
    batch = {"batch_size": 2} if tiny else {}
    results, shown, minutes, params = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as root, one_thread():
        root = Path(root)
        dalle, image, minutes = image_model(root, budget)
        _, interp, minutes["interp"] = trained_family(root, "interp", "cogvideo-interp-moving-mnist5k", interp_steps,
                                                      image_model=str(dalle), **batch)
        for name, extra in VARIANTS.items():
            _, run, minutes[name] = trained_family(root, name, "cogvideo-moving-mnist5k", key_steps,
                                                   image_model=str(dalle), **batch, **extra)
            params[name] = sum(p.numel() for p in run.model.parameters())
            for label, gap, interpolated in SCHEDULES:
                results[(name, label)], shown[(name, label)] = clips_scored(
                    run, n, gap, interp if interpolated else None, scale, frechet)
        image = image.evaluate(n, scale=scale, seed=0) if frechet else {}
        real_keys = interp.evaluate(n, seed=0, gap=2, scale=scale) if frechet else {}
    params["interp"] = sum(p.numel() for p in interp.model.parameters())
    rows = []
    if image:
        rows.append(["the image model alone (stills)", "1 frame", "", minutes["dalle"],
                     image["frame_accuracy"], "", "", image["frechet_distance_frames"]])
    for (name, label), m in results.items():
        rows.append([f"from {'the image model' if name == 'image' else 'scratch'}: {label}", f"{m['frames']} frames",
                     params[name], minutes[name], *(m.get(k, "") for k in MEASURES)])
    if real_keys:
        rows.append([f"the interpolation run fed real key frames at gap 2 (drawn frames: PSNR "
                     f"{real_keys['psnr_drawn_frames']:.1f} dB)", f"{real_keys['frames']} frames", params["interp"],
                     minutes["interp"], *(real_keys.get(k, "") for k in MEASURES)])
    for label, _, _ in SCHEDULES:     # the real test clips of as many frames (every test clip: not at tiny)
        m = results[("image", label)]
        if frechet:
            rows.append([f"real test clips ({m['frames']} frames)", f"{m['frames']} frames", "", "",
                         *(m[f"real_{k}"] for k in list(MEASURES)[:3]), m["frechet_real_vs_real_frames"]])
    vq_steps, dalle_steps, *_ = SIZES[budget]
    notes = [f"{'tiny networks' if tiny else 'the presets'}: vq-ae-moving-stills {vq_steps} steps and "
             f"dalle-moving-stills {dalle_steps} ({minutes['vq']:.1f} + {minutes['dalle']:.1f} min, left out of the "
             f"rows as CogVideoX's rows leave out its VAE), each key-frame variant {key_steps} steps, interpolation "
             f"{interp_steps}; one thread; {n} clips a schedule, CFG {scale:g} on the logits; chance: digit 0.1, "
             f"direction 0.25" + ("; at tiny no Frechet distance, image-model, real-key-frame or real-clip rows "
                                  "(they read every test clip)" if tiny else
                                  "; the real rows' FD: training against test frames"),
             *_verdicts(results)]
    data = {"budget": budget, "sizes": SIZES[budget], "minutes": minutes, "parameters": params, "image_model": image,
            "interpolation_of_real_key_frames": real_keys,
            "results": {f"{name}/{label}": m for (name, label), m in results.items()}}

    def plot(path):
        from ...video_io import write_gif

        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 1.6]})
        for i, name in enumerate(VARIANTS):
            values = [results[(name, label)]["frame_accuracy"] for label, _, _ in SCHEDULES]
            ax.bar([j + 0.4 * i for j in range(len(SCHEDULES))], values, width=0.4, label=f"from {name}")
        ax.set_xticks([j + 0.2 for j in range(len(SCHEDULES))], [s[0] for s in SCHEDULES], fontsize=7)
        ax.set(ylabel="the named digit read (frames)", title="frame accuracy", ylim=(0, 1))
        ax.legend(fontsize=7)
        last = SCHEDULES[-1][0]
        strips = [torch.cat(list(shown[(name, last)][k, 0]), 1) for name in VARIANTS for k in range(min(2, n))]
        pic.imshow(torch.cat(strips, 0).float().clamp(-1, 1).numpy(), cmap="gray", vmin=-1, vmax=1)
        pic.set(xticks=[], yticks=[], title=f"{last}: from the image model (top), from scratch (bottom)")
        save(fig, path)
        for name in VARIANTS:
            x = shown[(name, last)]
            write_gif(x[:20], Path(path).parent / f"cogvideo_{name}_{x.shape[2]}.gif")
    head = ["model", "clips", "parameters", "train min", *MEASURES.values()]
    return Report("cogvideo", f"CogVideo from the image model against from scratch: {key_steps} key-frame steps, "
                              f"{n} clips a schedule", head, rows, notes, data, plot)


def _verdicts(results: dict) -> list[str]:
    """The measured result in words, each claim said to hold or not at this budget."""
    first = SCHEDULES[0][0]
    image, scratch = results[("image", first)], results[("scratch", first)]
    out = [f"key frames from the image model against from scratch: the named digit in {image['frame_accuracy']:.0%} "
           f"of frames against {scratch['frame_accuracy']:.0%}"]
    if "frechet_distance_frames" in image:
        better = image["frechet_distance_frames"] < scratch["frechet_distance_frames"]
        out[0] += (f", per-frame FD {image['frechet_distance_frames']:.1f} against "
                   f"{scratch['frechet_distance_frames']:.1f}")
    else:
        better = image["frame_accuracy"] > scratch["frame_accuracy"]
    out[0] += (" -- starting from the image model makes the frames, as CogVideo claims" if better else
               " -- NOT the image model's head start at this budget")
    out.append("motion: direction " + ", ".join(f"{label} {results[('image', label)]['direction_accuracy']:.2f}"
                                                for label, _, _ in SCHEDULES)
               + " from the image model (chance 0.25); temporal consistency "
               + ", ".join(f"{results[('image', label)]['temporal_consistency']:.2f}" for label, _, _ in SCHEDULES))
    return out
