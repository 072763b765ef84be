"""Run by torchrun in tests/distributed/test_tensor_parallel.py (not collected by pytest):

    torchrun --standalone --nproc-per-node 2 tests/tp_worker.py OUT

On 2 gloo ranks, for DiT (qk-norm, class labels, a caption through its tiny text encoder and
cross-attention) and U-ViT (qk-norm, long skips), with and without sequence parallelism, and for
the DALL-E transformer (attention and MLP dropout 0.1) and CogVideoX (expert adaLN, 3-D RoPE, a
caption) with tensor parallelism alone: one model split over the two
ranks by its tensor-parallel plan and one whole model in every rank, both from the same
non-zero weights, take three AdamW steps with gradient clipping on the same batch; each rank
writes OUT/rank<R>.json with the largest differences of outputs, gradients and weights (each
divided by the whole model's largest magnitude), the bytes of parameters each rank holds, and
the bytes autograd saves in one forward.  "uvit-sp-broken" is U-ViT under sp without the sum of
the norms' gradients over the ranks, and "dalle-local-dropout" DALL-E with each rank drawing the
attention's dropout mask for its own heads only: the faults the tests must see.
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
    "dalle": ("dalle", dict(text_vocab=20, text_len=6, num_codes=16, image_len=9, width=64, depth=2, heads=4,
                            dropout=0.1)),
    "cogvideox": ("cogvideox", dict(in_channels=2, sample_frames=3, sample_size=4, patch_size=2, hidden_size=64,
                                    depth=2, num_heads=4, time_embed_dim=32, context_dim=16, context_vocab=20,
                                    context_len=4)),
}


def make_inputs(kind: str, g: torch.Generator, B: int = 4) -> dict:
    if kind == "dalle":
        return dict(text=torch.randint(0, 20, (B, 6), generator=g), image=torch.randint(0, 16, (B, 8), generator=g))
    x = torch.randn(B, 2, 3, 4, 4, generator=g) if kind == "cogvideox" else torch.randn(B, 1, 16, 16, generator=g)
    inputs = dict(x=x, t=torch.rand(B, generator=g) * 1000)
    if kind in ("dit", "uvit"):
        inputs["y"] = torch.randint(0, 3, (B,), generator=g)
    if kind in ("dit", "cogvideox"):
        inputs.update(context=torch.randint(1, 20, (B, 4), generator=g),
                      context_mask=torch.tensor([[True, True, True, False]] * B))
    return inputs


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
        model(**inputs).float().sum()
    return sum(seen.values())


def compare(name: str, sp: bool, world: World, mesh, broken: bool = False, local_dropout: bool = False) -> dict:
    kind, config = CONFIGS[name]
    ref, split = build(kind, config), build(kind, config)
    TP.parallelize(split, mesh, sp=sp, sum_token_grads=not broken)
    if local_dropout:  # each rank draws a mask for its own heads only: the masks depend on the layout
        for m in split.modules():
            if hasattr(m, "dropout_heads"):
                m.dropout_heads = None
    inputs = make_inputs(kind, torch.Generator().manual_seed(2))
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.01) for m in (ref, split)]
    diff = {"output": 0.0, "gradient": 0.0, "weight": 0.0}
    scale = {"output": 0.0, "gradient": 0.0, "weight": 0.0}
    for step in range(3):
        torch.manual_seed(100 + step)  # the same global RNG state for both (DALL-E's dropout)
        out_ref = ref(**inputs)
        torch.manual_seed(100 + step)
        out = split(**inputs)
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
    split_names = {path for path, k in split.tensor_parallel_plan(2, sp)
                   if k in ("colwise", "rowwise", "rowwise_whole", "colwise_gather")}
    held = {"split": 0, "whole_split": 0, "replicated": 0}
    for module_name, module in split.named_modules():
        for p in module.parameters(recurse=False):
            sharded = isinstance(p, DTensor) and not p.placements[0].is_replicate()
            part = "split" if module_name in split_names and sharded else "replicated"
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
    for name in ("dalle", "cogvideox"):  # tensor parallelism alone (their plans refuse sp)
        results[name] = compare(name, False, world, mesh)
    results["dalle-local-dropout"] = compare("dalle", False, world, mesh, local_dropout=True)
    (out / f"rank{rank}.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
