"""CLIP (Radford et al. 2021, secs. 2.3 and 3.1): an image tower and a text tower trained by the
symmetric InfoNCE loss on (image, caption) pairs classify images zero-shot -- a digit is the
caption nearest the image ("an image of a seven") -- with no label ever seen as a class.  The
paper compares zero-shot CLIP with a supervised classifier on the same features; here the
comparison is with the same image tower trained on the labels.

Measured: a `clip` run (`training.presets`' clip-digits / clip-mnist5k: CNN image tower, tiny
text transformer, 64-d unit embeddings, batch 128) scored on the test split (`run.evaluate`:
zero-shot with the training and held-out phrasings, plain and as an ensemble over every
thickness x slant variant, and recall@1 between images and their own captions), beside
CLIP's image tower with a 10-way output trained by cross-entropy with the preset's
optimisation exactly (AdamW, warm-up and cosine decay, the same data order, gradient clipping,
EMA weights scored), the same steps.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from ...playbook.report import Report, pyplot, save
from .bases import train_base

# budget -> (dataset, steps of each contestant)
SIZES = {"tiny": ("digits", 5), "small": ("mnist5k", 250), "full": ("mnist5k", 1000)}


def supervised(steps: int, dataset: str) -> dict:
    """CLIP's image tower with a 10-way output trained by cross-entropy on the labels with the
    clip-DATASET preset's optimisation, its EMA weights' test accuracy."""
    import torch.nn.functional as F

    from ...data import load_dataset
    from ...models.clip import CLIPConfig, ImageTower
    from ...training.ema import EMA
    from ...training.presets import preset_config
    from ...training.trainer import lr_at, micro_batch_indices

    cfg = preset_config(f"clip-{dataset}", {"steps": steps})
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    torch.manual_seed(cfg.seed)
    net = ImageTower(CLIPConfig(image_size=train.data.shape[-1], embed_dim=10, **cfg.model_config))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(net, cfg.ema_decay)
    wall = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        idx = micro_batch_indices(len(train.data), cfg.batch_size, step, cfg.seed)
        loss = F.cross_entropy(net(train.data[idx]), train.labels[idx].long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(net)
    wall = time.perf_counter() - wall
    net.eval()
    with torch.no_grad(), ema.applied(net):
        accuracy = float((net(test.data).argmax(1) == test.labels).double().mean())
    return {"test_accuracy": accuracy, "parameters": sum(p.numel() for p in net.parameters()), "seconds": wall}


def clip_note(budget: str) -> Report:
    from ...training import load

    dataset, steps = SIZES[budget]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = load(train_base(f"clip-{dataset}", Path(tmp) / "clip", steps))
        seconds = time.perf_counter() - start
        scores = run.evaluate()
    params = sum(p.numel() for p in run.model.parameters())
    tower = sum(p.numel() for p in run.model.image.parameters())
    clip = {"parameters": params, "image_tower_parameters": tower, "seconds": seconds, **scores}
    sup = supervised(steps, dataset)
    rows = [["CLIP (tiny text tower)", params, steps, clip["zero_shot_train"], clip["zero_shot_train_all_attributes"],
             clip["zero_shot_held_out"], clip["zero_shot_held_out_all_attributes"], clip["recall_image_to_text"],
             clip["recall_text_to_image"]],
            ["the image tower, supervised", sup["parameters"], steps, sup["test_accuracy"], "-", "-", "-", "-", "-"]]
    gap = sup["test_accuracy"] - clip["zero_shot_train"]
    notes = [f"clip-{dataset} trained {steps} steps (image tower {tower:,} of {params:,} weights), scored on the "
             f"{clip['examples']} test images; the supervised tower the same steps, batch and optimisation; accuracy "
             "columns: zero-shot for CLIP, test accuracy for the supervised tower",
             f"zero-shot with the training phrasings {clip['zero_shot_train']:.1%} (held-out phrasings "
             f"{clip['zero_shot_held_out']:.1%}) against supervised {sup['test_accuracy']:.1%}: "
             + (f"the labels are worth {gap:.1%} more on this test" if gap > 0 else
                "zero-shot CLIP is as accurate as the supervised tower here"),
             f"training time here: CLIP {clip['seconds']:.0f} s, the supervised tower {sup['seconds']:.0f} s"]
    data = {"budget": budget, "dataset": dataset, "steps": steps, "clip": clip, "supervised": sup}

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 3.5))
        names = ["zero-shot\ntraining", "zero-shot\ntraining, all attr.", "zero-shot\nheld-out",
                 "zero-shot\nheld-out, all attr.", "supervised\ntest accuracy"]
        values = [clip["zero_shot_train"], clip["zero_shot_train_all_attributes"], clip["zero_shot_held_out"],
                  clip["zero_shot_held_out_all_attributes"], sup["test_accuracy"]]
        ax.bar(names, values, color=["C0"] * 4 + ["C1"])
        ax.set(ylim=(0, 1), ylabel="accuracy on the test split", title=f"CLIP zero-shot against supervised, "
                                                                        f"{steps} steps each ({dataset})")
        ax.tick_params(axis="x", labelsize=7)
        save(fig, path)
    return Report("clip", f"CLIP zero-shot against the supervised image tower ({dataset}, {steps} steps each)",
                  ["model", "weights", "steps", "zero-shot train / accuracy", "train, all attributes", "held-out",
                   "held-out, all attributes", "recall@1 image->text", "recall@1 text->image"], rows, notes, data,
                  plot)
