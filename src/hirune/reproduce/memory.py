"""ZeRO's figure 1 (Rajbhandari et al. 2020): the memory per GPU of 7.5 B parameters trained
with mixed-precision Adam on 64 GPUs -- 2 + 2 + 12 bytes a parameter (fp16 weights and
gradients; fp32 master weights, momentum and variance) -- as each ZeRO stage shards one more
of them: 120 GB, then 31.4 (optimizer states, Pos), 16.6 (+ gradients, Pos+g) and 1.9 GB
(+ parameters, Pos+g+p).  hirune's planner (`distributed.planner.memory_per_gpu`, the accounting
`hirune plan` uses; its EMA left out, which the paper does not keep) computes the same table,
for the paper's sizes and for N = 1 .. 1024.
"""

from __future__ import annotations

from ..distributed.planner import memory_per_gpu
from ..playbook.report import Report, pyplot, save

PAPER = {"ddp": 120.0, "zero1": 31.4, "zero2": 16.6, "zero3": 1.9}   # GB per GPU, the paper's figure 1
NAMES = {"ddp": "baseline", "zero1": "Pos", "zero2": "Pos+g", "zero3": "Pos+g+p"}


def zero_note(budget: str, params: int = 7_500_000_000, gpus: int = 64) -> Report:
    rows, mine = [], {}
    for strategy, paper in PAPER.items():
        mem = memory_per_gpu(params, strategy, gpus, "mixed", ema=False)
        mine[strategy] = mem.total / 1e9
        rows.append([f"{strategy} ({NAMES[strategy]})", mem.weights / 1e9, mem.gradients / 1e9, mem.optimizer / 1e9,
                     mine[strategy], paper])
    worlds = [1, 4, 16, 64, 256, 1024]
    scaling = {s: [memory_per_gpu(params, s, n, "mixed", ema=False).total / 1e9 for n in worlds] for s in PAPER}
    notes = ["hirune's planner against the paper's figure 1: " + ", ".join(
        f"{NAMES[s]} {mine[s]:.1f} vs {PAPER[s]}" for s in PAPER) + " GB"]

    def plot(path):
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        for s, values in scaling.items():
            ax.plot(worlds, values, marker="o", label=f"{s} ({NAMES[s]})")
        ax.set(xscale="log", yscale="log", xlabel="GPUs", ylabel="GB per GPU (weights, gradients, Adam)",
               title=f"{params / 1e9:g} B parameters, mixed-precision Adam")
        ax.legend()
        save(fig, path)
    return Report("zero", f"memory per GPU of {params / 1e9:g} B parameters on {gpus} GPUs (GB)",
                  ["strategy", "weights", "gradients", "optimizer", "total", "paper"], rows, notes,
                  {"per_gpu_gb": mine, "paper_gb": PAPER, "worlds": worlds, "scaling_gb": scaling}, plot)
