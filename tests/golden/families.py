"""The behaviour every family must keep: one short run per family, driven only through the
command line (the interface that outlives any refactor), and what to read back from it.

`record.py` ran these at commit 31bde1a (before the family interface existed) and stored
each run directory under `tests/golden/v0/` (one process: `runs/`, two gloo processes:
`runs2/`) with the samples, evaluations and inversions read from them; `tests/test_golden.py`
runs them again with today's code and compares.

Paths are relative (runs/NAME): the latent run names its autoencoder and the reflow run its
teacher as runs/..., so a copy of the folder works anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
from pathlib import Path

import numpy as np
import torch

MLP = {"hidden": 32, "depth": 2}
UNET = {"channels": 4, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
        "head_channels": 4}
AE = {"size": "f2", "channels": 4, "z_channels": 2}
COMMON = {"steps": 3, "batch_size": 8, "log_every": 1, "ckpt_every": 3, "sample_every": 3, "num_samples": 4,
          "warmup": 2}
# the preview sampler's steps, a setting of the diffusion family; the recording gave it to every
# run, and the other families never read it (they refuse it since the family interface)
DIFFUSION = {"sample_steps": 2}

# name: (preset, overrides); the order is the order of training (teachers and first stages first)
RUNS: dict[str, tuple[str, dict]] = {
    "ddpm": ("ddpm-two-moons", {"model_config": MLP, "grad_accum": 2}),
    "vpred": ("vpred-digits", {"model_config": UNET, "class_conditional": True}),
    "iddpm": ("iddpm-digits", {"model_config": UNET}),
    "ncsn": ("ncsn-two-moons", {"model_config": MLP, "sample_steps": 10}),
    "vpsde": ("vpsde-digits", {"model_config": UNET, "weighting": "likelihood"}),
    "flow-ot": ("flow-two-moons", {"model_config": MLP, "coupling": "ot"}),
    "reflow": ("flow-two-moons", {"model_config": MLP, "reflow_from": "runs/flow-ot", "reflow_steps": 2}),
    "realnvp": ("realnvp-digits", {"model_config": {"kind": "realnvp", "levels": 1, "steps": 2, "hidden": 8}}),
    "glow": ("glow-digits", {"model_config": {"kind": "glow", "levels": 1, "steps": 2, "hidden": 8}}),
    "maf": ("maf-two-moons", {"model_config": {"kind": "maf", "steps": 2, "hidden": 16}}),
    "kl-ae": ("kl-ae-digits", {"model_config": {**AE, "kl_weight": 0.001}}),
    "kl-ae-gan": ("kl-ae-digits", {"model_config": {**AE, "kl_weight": 0.001, "disc_weight": 0.5, "disc_start": 1,
                                                    "disc_channels": 8}, "grad_accum": 2}),
    "vq-ae": ("vq-ae-digits", {"model_config": {**AE, "codebook_size": 16, "codebook_update": "ema"}}),
    "classifier": ("classifier-digits", {"model_config": {"channels": 4, "channel_mult": [1, 2],
                                                          "attention_resolutions": [2], "head_channels": 4}}),
    "ldm": ("ldm-mnist5k", {"dataset": "digits", "autoencoder": "runs/kl-ae", "sampler": "ddim",  # as recorded
                            "model_config": {**UNET, "attention_resolutions": [1]}}),
    "dit": ("dit-digits", {"model_config": {"hidden_size": 16, "depth": 2, "num_heads": 2, "patch_size": 2},
                           "class_conditional": True, "recompute": True}),
    "uvit": ("uvit-digits", {"model_config": {"hidden_size": 16, "depth": 3, "num_heads": 2, "patch_size": 2}}),
    "text": ("text-digits", {"model_config": {**UNET, "context_dim": 8}}),
}
# the two-process runs: the same, some under the other strategies (zero2 / zero3 write shards)
STRATEGIES = {"vpred": "zero1", "dit": "zero2", "uvit": "zero3", "iddpm": "zero2"}

DIFFUSION_RUNS = ("ddpm", "vpred", "iddpm", "ncsn", "vpsde", "flow-ot", "reflow", "ldm", "dit", "uvit", "text")
GENERATORS = ("ddpm", "vpred", "iddpm", "ncsn", "vpsde", "flow-ot", "reflow", "realnvp", "glow", "maf", "ldm",
              "dit", "uvit", "text")
EVALUATED = ("kl-ae", "kl-ae-gan", "vq-ae", "classifier")


def train_words(name: str, root: str = "runs", processes: int = 1) -> list[str]:
    """`hirune train` arguments of run `name` written to ROOT/name."""
    preset, overrides = RUNS[name]
    values = {**COMMON, **(DIFFUSION if name in DIFFUSION_RUNS else {}), **overrides, "out": f"{root}/{name}"}
    if processes > 1:
        values["strategy"] = STRATEGIES.get(name, "ddp")
        for key in ("autoencoder", "reflow_from"):
            if key in values:
                values[key] = values[key].replace("runs/", f"{root}/")
    return [preset] + [f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else v}"
                       for k, v in values.items()]


def read_samples_words(name: str, root: str, out: str) -> list[list[str]]:
    """The commands that read a trained run back: samples (and a class grid), an
    evaluation, an inversion; each writes under `out`."""
    run = f"{root}/{name}"
    if name in EVALUATED:
        return [["eval", run, "--n", "16"]]
    cmds = [["sample", run, "--n", "4", "--steps", "2", "--seed", "1", "--out", f"{out}/{name}.npz"]]
    if name in ("vpred", "dit"):
        cmds.append(["sample", run, "--n", "4", "--steps", "2", "--guidance", "cfg", "--scale", "2",
                     "--class", "3", "--out", f"{out}/{name}-cfg.npz"])
        cmds.append(["invert", run, "test:0", "--steps", "3", "--out", f"{out}/{name}-invert.png"])
    if name == "ldm":
        cmds.append(["invert", run, "test:0", "--steps", "3", "--out", f"{out}/{name}-invert.png"])
    if name == "text":
        cmds.append(["sample", run, "--n", "2", "--steps", "2", "--prompt", "a thick handwritten seven",
                     "--out", f"{out}/{name}-prompt.npz"])
    if name in ("realnvp", "maf"):
        cmds.append(["eval", run, "--n", "8", "--nll", "8"])
    return cmds


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without its timings."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def environment() -> dict:
    """What decides the bits of a float computation here: torch, its CPU kernels, the CPU."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": cpu}


def pixels_sha(png: Path) -> str:
    from PIL import Image

    return hashlib.sha256(np.asarray(Image.open(png)).tobytes()).hexdigest()


def tensor_sha(t: torch.Tensor) -> str:
    """A tensor's dtype, shape and bytes, hashed."""
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return hashlib.sha256(f"{t.dtype} {tuple(t.shape)} ".encode() + data).hexdigest()


def checkpoint_hashes(run_dir: Path) -> dict[str, str]:
    """Every tensor of the latest checkpoint's safetensors files (shards too), hashed:
    {"<file>/<key>": sha256}."""
    from safetensors.torch import load_file

    root = Path(run_dir) / "checkpoints"
    ckpt = root / (root / "latest").read_text().strip()
    return {f"{f.relative_to(ckpt).as_posix()}/{k}": tensor_sha(v)
            for f in sorted(ckpt.rglob("*.safetensors")) for k, v in sorted(load_file(str(f)).items())}


def cli(words: list[str]) -> str:
    """hirune's CLI in this process; returns what it printed on stdout."""
    from hirune.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(words)
    if code != 0:
        raise RuntimeError(f"hirune {' '.join(words)} exited {code}")
    return buf.getvalue()


def read_back(root: str, names, out: str) -> dict:
    printed = {}
    for name in names:
        for words in read_samples_words(name, root, out):
            text = cli(words)
            if words[0] == "eval":
                printed[" ".join(words)] = json.loads(text.strip().splitlines()[-1])
    return printed


