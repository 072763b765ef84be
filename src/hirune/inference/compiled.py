"""A run's network compiled for sampling (`hirune sample --compile`).

A sampler calls the network tens of times on tensors of one shape, so it pays to compile
that call once: `torch.compile(dynamic=False)` traces the network for the batch's shape and
fuses its element-wise work; on a GPU, mode "reduce-overhead" also records the call as a
CUDA graph, so each step is one graph launch instead of hundreds of kernel launches (what
dominates at small batches).  The first call compiles (seconds to a minute); every later
call with the same shapes reuses it.  Guidance wraps the run's denoiser afterwards and so
calls the compiled network too (its two branches in one batch: one shape).

CUDA graphs write each replay's output into the same memory, so the compiled call hands back
a copy: a sampler may keep an earlier step's prediction (multistep solvers do).
"""

from __future__ import annotations

import torch


class CompiledNetwork(torch.nn.Module):
    """`net` under torch.compile for fixed shapes; the output copied when CUDA graphs hold it."""

    def __init__(self, net: torch.nn.Module, mode: str | None, backend: str):
        super().__init__()
        self.net = net
        self.graphs = mode == "reduce-overhead"
        self.compiled = torch.compile(net, mode=mode, dynamic=False, backend=backend)

    def forward(self, *args, **kwargs):
        out = self.compiled(*args, **kwargs)
        return out.clone() if self.graphs else out


def compile_network(run, mode: str | None = None, backend: str = "inductor"):
    """Make `run` sample through its compiled network; returns the run.  `mode`: torch.compile's
    (default: "reduce-overhead", CUDA graphs, on a GPU; the default mode on a CPU); `backend`
    "eager" traces without generating code (for tests).  Runs without a denoiser network
    (normalizing flows, image tokens) are refused."""
    denoiser = getattr(run, "denoiser", None)
    net = getattr(denoiser, "model", None)
    if not isinstance(net, torch.nn.Module):
        raise ValueError(f"--compile applies to runs sampled through a denoiser network (diffusion, flow "
                         f"matching); this is a {getattr(run, 'name', type(run).__name__)} run")
    if isinstance(net, CompiledNetwork):
        return run
    if mode is None:
        device = next(net.parameters()).device
        mode = "reduce-overhead" if device.type == "cuda" else None
    denoiser.model = CompiledNetwork(net, mode, backend)
    return run
