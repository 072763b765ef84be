"""Progressive training of CogVideoX in miniature (Yang et al. 2024, sec. 3.2): low resolution first,
then high, with the larger grid's positions extrapolated or interpolated, against training at the
high resolution from scratch at equal CPU time (`families/progressive.py`).

Nothing in the expert transformer depends on the grid's size but the positions, so `base=RUN`
takes a 16 x 16 run's network whole to 32 x 32 and lets one thing be chosen: where the larger
grid's tokens sit -- `extrapolate` (integer positions, CogVideoX's choice: neighbours stay one
apart, larger offsets are new) or `interpolate` (mapped onto the base's grid).  The claims
measured, all on the latents of one video VAE trained first:

* low         -- `cogvideox-moving-mnist5k-16` (the clips pooled to 16 x 16);
* low at 32   -- its network at 32 x 32 before any step there, under each position setting (what the
                 positions alone carry over: neither works without training, both worse than v = 0);
* progressive -- `cogvideox-progressive-moving-mnist5k` from low's weights, extrapolated and
                 interpolated (the paper: extrapolation has the lower loss);
* scratch     -- `cogvideox-moving-mnist5k` at 32 x 32 from the start, the same steps at 32 x 32, and
                 the CPU time of low and progressive together (a 16 x 16 step costs STEP_COST_16 of
                 one at 32 x 32): does progressive training pay at equal CPU time?

Each row is scored on a fixed-draw loss -- the v-loss on the training clips at one draw of times and
noise, the same for every row of a size -- and on n sampled clips, the prompts naming every digit and
motion in turn (DDIM, classifier-free guidance), by the shipped evaluator (`evaluation.video`; 16 x 16
clips read on the 32 x 32 canvas, beside the real 16 x 16 clips).  At tiny the networks are one-block
transformers in pixel space trained a few steps: the pipeline, not the claim.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from ..sampling import one_thread
from .cogvideox import TINY_NET

LOW, HIGH = "cogvideox-moving-mnist5k-16", "cogvideox-moving-mnist5k"
PROGRESSIVE = "cogvideox-progressive-moving-mnist5k"
SCALINGS = ("extrapolate", "interpolate")
STEP_COST_16 = 0.73   # a 16 x 16 step against a 32 x 32 one: 237 ms against 324 ms (preset, one thread, batch 32)
# budget -> (VAE steps (0: pixel space), steps at 16 x 16, steps at 32 x 32, clips scored, DDIM steps, CFG scale,
#            clips of the fixed-draw loss)
SIZES = {"tiny": (0, 2, 2, 2, 2, 4.0, 8), "small": (200, 300, 150, 40, 25, 4.0, 256),
         "full": (2000, 1500, 750, 200, 50, 4.0, 512)}
MEASURES = {"frame_accuracy": "frame accuracy", "direction_accuracy": "direction",
            "temporal_consistency": "temporal consistency", "frechet_distance_frames": "per-frame FD"}


def equal_steps(low: int, high: int) -> int:
    """The 32 x 32 steps that cost the CPU time of `low` steps at 16 x 16 and `high` at 32 x 32."""
    return high + round(low * STEP_COST_16)


def fixed_draw_loss(family, n: int = 512, seed: int = 0) -> float:
    """The family's training loss on n of its training clips spread over the set, at one draw of
    times and noise from `seed` (the same clips and draw for every network of a shape)."""
    from ...families import Batch

    data, _ = family.training_data()
    idx = (torch.arange(n) * len(data)) // n
    draw = family.draw(n, torch.Generator(device=family.device).manual_seed(seed))
    family.model.eval()
    with torch.no_grad():
        return float(family.loss(family.model, Batch(data[idx], None, idx), draw, 0).loss)


def moved(model, scaling: str, size: int, where: str = "the base"):
    """`model` (a CogVideoX network) built for latents of `size` x `size` under `scaling`, its weights
    copied (`families.progressive`: interpolate maps the positions onto the model's own grid)."""
    from ...families.progressive import resized_config
    from ...models import build_model

    c = model.config
    out = build_model("cogvideox", **resized_config(c, c.sample_frames, size, {"rope_scaling": scaling}, where))
    out.load_state_dict(model.state_dict())
    return out.eval()


def built(model):
    """A network of `model`'s kind and config as built, before any step (adaLN-Zero: it predicts v = 0)."""
    import dataclasses

    from ...models import build_model

    return build_model("cogvideox", **dataclasses.asdict(model.config)).eval()


def measured(x: torch.Tensor, labels, motions, frechet: bool) -> dict:
    """The evaluator's measures of clips x against the digits and motions their prompts named
    (`evaluation.video`); with `frechet` `video_report`'s: the per-frame Frechet distance to the test
    frames and the real test clips' measures ("real_" keys), which read every test clip once a frame
    count (a minute, not the seconds of the tiny budget)."""
    from ...evaluation.video import video_measures, video_report

    return video_report(x, labels, motions) if frechet else video_measures(x, labels, motions)[0]


def score(family, model, n: int, ddim: int, scale: float, draw_n: int, frechet: bool) -> tuple[dict, torch.Tensor]:
    """`model` (the architecture of the family's network) in the family: the fixed-draw loss and the
    evaluator's measures of n clips drawn under the prompts naming every digit and motion in turn."""
    from ...evaluation.video import on_canvas

    family.model.load_state_dict(model.state_dict())
    family.model.config = model.config   # the positions (rope_scaling, rope_base) are the config's
    metrics = {"fixed_draw_loss": fixed_draw_loss(family, draw_n)}
    guided = family.guide("cfg", scale) if scale != 1.0 else None
    prompts, labels, motions = family.prompts(n)
    out, _ = family.generate(n, steps=ddim, seed=0, prompts=prompts, denoiser=guided, progress=False)
    x = on_canvas(out.x.float().clamp(-1, 1))
    return {**metrics, **measured(x, labels, motions, frechet)}, x


def real_measures(dataset: str, n: int, frechet: bool) -> dict:
    """The evaluator's measures of n real test clips of `dataset` (every digit in turn), with the
    per-frame Frechet distance of training frames to test frames when `frechet`."""
    from ...data import load_dataset
    from ...evaluation.video import real_video_report, spread, video_measures

    if frechet:
        return real_video_report(dataset, n)
    test = load_dataset(dataset, "test")
    keep = spread(len(test), n)
    return video_measures(test.data[keep], test.labels[keep], test.attributes["direction"][keep])[0]


def trained_family(root: Path, name: str, preset: str, steps: int, **extra):
    """`preset` trained `steps` steps into ROOT/name (one checkpoint, at the end): (the run folder, its
    trainer's family with the EMA weights copied into its network, in eval mode -- what `load` gives,
    its training data already prepared --, minutes of wall time)."""
    from ...training.loop import train
    from ...training.presets import preset_config

    start, out = time.time(), root / name
    trainer = train(preset_config(preset, {"steps": steps, "sample_every": 0, "ckpt_every": steps, "eval_samples": 0,
                                           "out": str(out), "log_every": max(1, steps // 10), **extra}),
                    progress=False)
    trainer.ema.copy_to(trainer.model)
    trainer.model.eval()
    return out, trainer.family, (time.time() - start) / 60


def progressive_note(budget: str) -> Report:
    vae_steps, low_steps, high_steps, n, ddim, scale, draw_n = SIZES[budget]
    frechet, equal = budget != "tiny", equal_steps(low_steps, high_steps)
    rows, results, shown = [], {}, {}
    with tempfile.TemporaryDirectory() as root, one_thread():
        root = Path(root)
        if vae_steps:
            vae, _, vae_minutes = trained_family(root, "vae", "video-vae-moving-mnist5k", vae_steps)
            space, net = {"autoencoder": str(vae)}, {}
        else:
            vae_minutes, space, net = 0.0, {"autoencoder": "", "batch_size": 4}, {"model_config": TINY_NET}
        low, at16, minutes = trained_family(root, "low", LOW, low_steps, **space, **net)
        low_net = copy.deepcopy(at16.model)
        runs = [("low (16 x 16)", at16, low_net, low_steps, 0, minutes)]
        for scaling in SCALINGS:
            _, high, minutes = trained_family(root, scaling, PROGRESSIVE, high_steps, base=str(low), **space,
                                              model_config={"rope_scaling": scaling})
            runs += [(f"low at 32 x 32, {scaling}, no step there", None,
                      moved(low_net, scaling, 8 if vae_steps else 32, str(low)), low_steps, 0, 0.0),
                     (f"progressive, {scaling}", None, high.model, low_steps, high_steps, minutes)]
        _, at32, minutes = trained_family(root, "scratch", HIGH, high_steps, **space, **net)
        runs.append(("scratch at 32 x 32", at32, copy.deepcopy(at32.model), 0, high_steps, minutes))
        _, same_time, minutes = trained_family(root, "scratch-equal", HIGH, equal, **space, **net)
        runs.append(("scratch at 32 x 32, the CPU time of progressive", None, same_time.model, 0, equal, minutes))
        as_built = built(at32.model)                 # the network as built predicts v = 0 (adaLN-Zero)
        for name, family, model, s16, s32, minutes in runs:
            metrics, shown[name] = score(family or at32, model, n, ddim, scale, draw_n, frechet)
            metrics.update(steps_16=s16, steps_32=s32, minutes=minutes)
            results[name] = metrics
            rows.append([name, f"{s16} / {s32}", minutes, metrics["fixed_draw_loss"],
                         *(metrics.get(k, "") for k in MEASURES)])
        at32.model.load_state_dict(as_built.state_dict())
        at32.model.config = as_built.config
        zero = fixed_draw_loss(at32, draw_n)
        real = {"16 x 16": real_measures("moving-mnist5k-16", n, frechet), "32 x 32": real_measures("moving-mnist5k",
                                                                                                    n, frechet)}
    rows.append(["predicting v = 0 (the network as built)", "", "", zero, "", "", "", ""])
    rows += [[f"real test clips ({size})", "", "", "", *(r.get(k, "") for k in MEASURES)] for size, r in real.items()]
    notes = [f"{'pixel space, one-block transformers' if not vae_steps else f'on a video VAE of {vae_steps} steps'} "
             f"({vae_minutes:.1f} min), one thread; {n} clips a row, DDIM {ddim}, CFG {scale:g}; fixed-draw loss on "
             f"{draw_n} training clips; equal CPU time: {equal} steps at 32 x 32 = {high_steps} + {low_steps} x "
             f"{STEP_COST_16} (a 16 x 16 step's cost at the preset)"
             + ("; no Frechet distance at tiny (it reads every test clip)" if not frechet else ""),
             *_verdicts(results, zero)]
    data = {"budget": budget, "vae_steps": vae_steps, "low_steps": low_steps, "high_steps": high_steps,
            "equal_steps": equal, "n": n, "ddim_steps": ddim, "scale": scale, "zero_prediction_loss": zero,
            "results": results, "real": real}

    def plot(path):
        from ...video_io import write_gif

        plt = pyplot()
        fig, (ax, pic) = plt.subplots(1, 2, figsize=(13, 5))
        names = list(results)
        ax.barh(range(len(names)), [results[k]["fixed_draw_loss"] for k in names])
        ax.axvline(zero, color="grey", ls="--", label="predicting v = 0")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="fixed-draw loss at the row's size", title="the loss at one fixed draw")
        ax.legend(fontsize=7)
        strips = [torch.cat(list(x[0, 0]), 1) for x in shown.values()]   # each row's first clip, frames in a row
        pic.imshow(torch.cat(strips, 0).numpy(), cmap="gray", vmin=-1, vmax=1)
        pic.set(xticks=[], yticks=[], title="the first clip of each row (top to bottom as the table)")
        save(fig, path)
        for i, x in enumerate(shown.values()):
            write_gif(x[:20], Path(path).parent / f"progressive_{i}.gif")
    head = ["run", "steps at 16 / 32", "train min", "fixed-draw loss", *MEASURES.values()]
    return Report("progressive", f"progressive training: 16 x 16 ({low_steps} steps) then 32 x 32 ({high_steps}), "
                                 f"against scratch at 32 x 32; {n} clips a row", head, rows, notes, data, plot)


def _verdicts(results: dict, zero: float) -> list[str]:
    """The measured result in words, each claim said to hold or not at this budget."""
    loss = {k: v["fixed_draw_loss"] for k, v in results.items()}
    cold = [loss[f"low at 32 x 32, {s}, no step there"] for s in SCALINGS]
    ext, inter = loss["progressive, extrapolate"], loss["progressive, interpolate"]
    scratch, equal = loss["scratch at 32 x 32"], loss["scratch at 32 x 32, the CPU time of progressive"]
    best = min(ext, inter)
    return [
        f"the 16 x 16 network at 32 x 32 before any step there: fixed-draw loss {cold[0]:.4f} extrapolated, "
        f"{cold[1]:.4f} interpolated, predicting v = 0 {zero:.4f}"
        + (" -- neither works without training at the new size" if min(cold) > zero else
           " -- the positions alone carry the network over at this budget"),
        f"after training at 32 x 32: extrapolate {ext:.4f}, interpolate {inter:.4f}"
        + (" -- extrapolation has the lower loss, as CogVideoX chose" if ext < inter else
           " -- NOT extrapolation's lower loss at this budget"),
        f"against scratch: the same steps at 32 x 32 {scratch:.4f}, the same CPU time {equal:.4f}, progressive "
        f"{best:.4f}" + (" -- progressive training pays at equal CPU time" if best < equal else
                         " -- progressive training does NOT pay at equal CPU time here (a 16 x 16 step is not cheap "
                         "enough at this scale)"),
    ]
