"""Run by torchrun in tests/distributed/test_contrastive.py (not collected by pytest):

    torchrun --standalone --nproc-per-node N tests/contrastive_worker.py OUT

Each rank builds the same small CLIP network (seeded), wraps it for DDP as training does
(`distributed.strategy.wrap`), takes its slice of one fixed global batch of images and
captions, and computes CLIP's loss in two ways: "gather" (the embeddings all-gathered with
gradients: the global batch's loss) and "local" (each rank's own rows only: the variant
the test must reject).  After backward (DDP averages the gradients) every rank writes its
loss and its parameters' gradients to OUT/<way>_rank<R>.pt.  `batch()` and `network()` are
also what the test's one-process reference uses.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

BATCH = 8


def network():
    from hirune.models import build_model
    from hirune.models.text import TextConditioner

    torch.manual_seed(0)
    text = TextConditioner("tiny")
    return build_model("clip", image_size=8, vocab_size=text.vocab_size, context_len=text.max_len, channels=8,
                       embed_dim=16, text_dim=32, text_depth=1), text


def batch(text) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from hirune.data import load_dataset
    from hirune.data.captions import Captioner

    data = load_dataset("digits", "train")
    idx = torch.arange(BATCH) * 7
    captions = Captioner(data.data, data.labels).captions(idx, idx % 4)
    context = text(captions)
    return data.data[idx], context["context"], context["context_mask"]


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def main(out: Path) -> None:
    from hirune.distributed import runtime
    from hirune.distributed.strategy import wrap
    from hirune.objectives.contrastive import contrastive_loss

    world, device = runtime.setup("cpu")
    for way in ("gather", "local"):
        model, text = network()
        forward = wrap(model, "ddp", world, device)
        images, ids, mask = batch(text)
        b = BATCH // world.size
        mine = slice(world.rank * b, (world.rank + 1) * b)
        image_emb, text_emb, scale = forward(images[mine], ids[mine], mask[mine])
        loss = contrastive_loss(image_emb, text_emb, scale, gather=way == "gather").loss
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": gradients(model)}, out / f"{way}_rank{world.rank}.pt")
    runtime.teardown(finished=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]))
    from hirune.distributed.runtime import leave

    leave(0)
