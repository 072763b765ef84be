"""Run by torchrun in tests/distributed/test_tensor_parallel.py (not collected by pytest):

    torchrun --standalone --nproc-per-node 2 tests/tp_worker.py OUT

On 2 gloo ranks, for DiT (qk-norm, class labels, a caption through cross-attention) and U-ViT
(qk-norm, long skips), with and without sequence parallelism: one model split over the two
ranks by its tensor-parallel plan and one whole model in every rank, both from the same
non-zero weights, take three AdamW steps with gradient clipping on the same batch; each rank
writes OUT/rank<R>.json with the largest differences of outputs, gradients and weights (each
divided by the whole model's largest magnitude), the bytes of parameters each rank holds, and
the bytes autograd saves in one forward.  "uvit-sp-broken" is U-ViT under sp without the sum of
the norms' gradients over the ranks: the fault the test must see.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from hirune.distributed import tensor_parallel as TP
from hirune.distributed.runtime import World
from hirune.models import build_model

CONFIGS = {
    "dit": ("dit", dict(in_channels=1, image_size=16, patch_size=2, hidden_size=64, depth=2, num_heads=4, qk_norm=True,
                        num_classes=3, context_dim=16, context_vocab=20, context_len=4)),
    "uvit": ("uvit", dict(in_channels=1, image_size=16, patch_size=2, hidden_size=64, depth=3, num_heads=4,
                          qk_norm=True, num_classes=3)),
}


def whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def build(kind: str, config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(kind, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero everywhere (adaLN-Zero and zero output layers would hide faults)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def saved_bytes(model, inputs: dict) -> int:
    seen, weights = {}, {whole(p).untyped_storage().data_ptr() for p in model.parameters()}
    weights |= {p.to_local().untyped_storage().data_ptr() for p in model.parameters() if isinstance(p, DTensor)}

    def pack(t):
        t_local = t.to_local() if isinstance(t, DTensor) else t
        try:
            storage = t_local.untyped_storage()
            ptr = storage.data_ptr()
        except RuntimeError:  # a tensor without data of its own (nothing to count)
            return t
        if ptr not in weights:
            seen[ptr] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs).sum()
    return sum(seen.values())


def compare(name: str, sp: bool, world: World, mesh, broken: bool = False) -> dict:
    kind, config = CONFIGS[name]
    ref, split = build(kind, config), build(kind, config)
    TP.parallelize(split, mesh, sp=sp, sum_token_grads=not broken)
    g = torch.Generator().manual_seed(2)
    B = 4
    inputs = dict(x=torch.randn(B, 1, 16, 16, generator=g), t=torch.rand(B, generator=g) * 1000,
                  y=torch.randint(0, 3, (B,), generator=g))
    if kind == "dit":
        inputs.update(context=torch.randint(1, 20, (B, 4), generator=g),
                      context_mask=torch.tensor([[True, True, True, False]] * B))
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01) for m in (ref, split)]
    diff = {"output": 0.0, "gradient": 0.0, "weight": 0.0}
    scale = {"output": 0.0, "gradient": 0.0, "weight": 0.0}
    for _ in range(3):
        out_ref, out = ref(**inputs), split(**inputs)
        diff["output"] = max(diff["output"], (out - out_ref).abs().max().item())
        scale["output"] = max(scale["output"], out_ref.abs().max().item())
        out_ref.square().mean().backward()
        out.square().mean().backward()
        TP.finish_gradients(split)
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        TP.clip_grad_norm(list(split.parameters()), 1.0, world)
        for p, q in zip(split.parameters(), ref.parameters()):
            diff["gradient"] = max(diff["gradient"], (whole(p.grad) - q.grad).abs().max().item())
            scale["gradient"] = max(scale["gradient"], q.grad.abs().max().item())
        for opt in opts:
            opt.step()
            opt.zero_grad()
    for p, q in zip(split.parameters(), ref.parameters()):
        diff["weight"] = max(diff["weight"], (whole(p) - q).abs().max().item())
        scale["weight"] = max(scale["weight"], q.abs().max().item())
    split_names = {path for path, k in split.tensor_parallel_plan(2, sp) if k in ("colwise", "rowwise", "colwise_gather")}
    held = {"split": 0, "whole_split": 0, "replicated": 0}
    for module_name, module in split.named_modules():
        for p in module.parameters(recurse=False):
            part = "split" if module_name in split_names and isinstance(p, DTensor) and not p.placements[0].is_replicate() \
                else "replicated"
            held[part] += p.to_local().numel() * 4 if isinstance(p, DTensor) else p.numel() * 4
            if part == "split":
                held["whole_split"] += p.numel() * 4
    return {"relative": {k: diff[k] / max(scale[k], 1e-12) for k in diff}, "params": held,
            "saved_bytes": saved_bytes(split, inputs), "saved_bytes_whole": saved_bytes(ref, inputs)}


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    world = World(rank, dist.get_world_size(), rank, "gloo", tp=dist.get_world_size())
    mesh = TP.make_mesh(world, torch.device("cpu"), world.size)["tp"]
    results = {}
    for name in ("dit", "uvit"):
        for sp in (False, True):
            results[f"{name}{'-sp' if sp else ''}"] = compare(name, sp, world, mesh)
    results["uvit-sp-broken"] = compare("uvit", True, world, mesh, broken=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
