"""Rectified flow's reflow (Liu et al. 2023, sec. 3.3): a trained flow-matching run (the
teacher) maps seeded noise z to x = ODE(z); the student then regresses on the fixed pairs
(x, z) instead of independent noise, which straightens its paths.

The pairs are drawn once, deterministically (noise from seed + 3, the teacher's own sampler
over `reflow_steps` steps), and kept in the student's run directory
(`reflow_pairs.safetensors`, with what they were drawn from), so a resumed or loaded
student never needs its teacher again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

PAIRS = "reflow_pairs.safetensors"


def draw_pairs(teacher, shape: tuple[int, ...], seed: int, steps: int) -> tuple[Tensor, Tensor]:
    """(z, x): N(0, I) noise of `shape` = (N, ...) from `seed` + 3 and the teacher's samples
    from it (its preview sampler, `steps` steps), on the CPU."""
    from ..sampling import get_sampler
    from ..sampling.timesteps import time_grid

    g = torch.Generator().manual_seed(seed + 3)
    z = torch.randn(shape, generator=g)
    ts = time_grid(teacher.process, steps)
    sampler = get_sampler(name=teacher.config.sampler)
    with torch.no_grad():
        x = torch.cat([sampler(teacher.denoiser, zc, ts).x for zc in z.split(1000)])
    return z, x


def check_teacher(teacher, config, dataset: str) -> None:
    """The teacher must be a flow-matching run on the same data and process."""
    objective = getattr(teacher.config, "objective", teacher.name)
    if objective != "flow_matching" or teacher.data.name != dataset:
        raise ValueError(f"reflow_from must be a flow-matching run on {dataset}; {config.reflow_from} is "
                         f"{objective} on {teacher.data.name}")
    if (teacher.config.process, teacher.config.process_config) != (config.process, config.process_config):
        raise ValueError("reflow_from was trained on another process")


def read_pairs(run_dir: Path, origin: dict) -> tuple[Tensor, Tensor] | None:
    """The stored (z, x) of a run directory, or None where there are none yet; refuses
    pairs drawn from another teacher, seed or step count."""
    from safetensors import safe_open

    path = Path(run_dir) / PAIRS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        saved = json.loads((f.metadata() or {}).get("origin", "{}"))
        if saved != origin:
            raise ValueError(f"{path} holds reflow pairs drawn from {saved}, this run asks for {origin}; "
                             "move it away to draw them again")
        return f.get_tensor("noise"), f.get_tensor("data")


def write_pairs(run_dir: Path, z: Tensor, x: Tensor, origin: dict) -> Path:
    """Store the pairs atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    path = Path(run_dir) / PAIRS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{PAIRS}.tmp-{os.getpid()}")
    save_file({"noise": z.contiguous(), "data": x.contiguous()}, str(tmp), metadata={"origin": json.dumps(origin)})
    os.replace(tmp, path)
    return path
