"""Checkpoints: safetensors for tensors, JSON for everything else, never pickle.

A run directory holds one folder per saved step and a `latest` file naming the newest
complete one:

    run/checkpoints/step_00001000/  model.safetensors  ema.safetensors  optimizer.safetensors
                                    state.json   (config, step, RNG, optimizer hyper-parameters,
                                                  sha256 of every tensor file)
    run/checkpoints/latest          "step_00001000"

A run sharded over several processes (FSDP2) may instead keep its model, EMA and
optimizer as torch.distributed.checkpoint shards, one safetensors file per rank with the
offsets of each piece in its JSON header (`step_.../shards/`, see
`hirune.distributed.sharded`); state.json then says `"layout": "sharded"` and hashes
those files too.

A save writes into a temporary folder, fsyncs, renames it into place, and only then
replaces `latest` (os.replace is atomic), so a crash or kill -9 at any point leaves the
previous checkpoint as the latest.  A load verifies every file's sha256 and the config,
and names what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt or from another config."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flatten_optimizer_state(state: dict) -> tuple[dict[str, Tensor], dict]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, Tensor], dict]:
    """The torch CPU (and CUDA) generator states as tensors."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return tensors, {}


def set_rng_state(tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def staging_dir(run_dir: str | Path, step: int) -> Path:
    """The temporary folder that checkpoint `step` is written into before it is renamed
    into place; the same path on every rank, so that all of them can write shards there."""
    return Path(run_dir) / "checkpoints" / f".tmp-step_{step:08d}"


def save_checkpoint(run_dir: str | Path, step: int, tensors: dict[str, dict[str, Tensor]],
                    state: dict, keep: int | None = 3, staged: Path | None = None) -> Path:
    """Write `tensors` (group name -> flat dict of tensors, one safetensors file per group)
    and the JSON-able `state` as checkpoint `step`; then point `latest` at it.  Keeps the
    newest `keep` checkpoints (None: all).  `staged`: a `staging_dir` other processes have
    already written files into (sharded checkpoints); they are hashed and committed too."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    if staged is None:
        tmp = root / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    else:
        tmp = staged
    for group, flat in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in flat.items()}, str(tmp / f"{group}.safetensors"))
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    hashes = {p.relative_to(tmp).as_posix(): _sha256(p) for p in files}
    meta = {"format": "hirune-checkpoint-1", "step": step, "files": hashes, **state}
    with open(tmp / "state.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    for path in files:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / LATEST)  # the commit point
    _fsync_dir(root)
    if keep is not None:
        done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if path.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the latest complete one of a run directory."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"no complete checkpoint in {path}")
        path = found
    return path


def load_checkpoint(path: str | Path, expect_config: dict | None = None, groups: tuple[str, ...] | None = None
                    ) -> tuple[dict[str, dict[str, Tensor]], dict]:
    """Read a checkpoint folder (or a run directory: its latest).  Returns (tensors, state):
    the tensors of every top-level group file, or of `groups` only (every file is verified;
    a sharded checkpoint's shards are left on disk for `hirune.distributed.sharded` to read).

    Raises CheckpointError naming the problem: missing files, a sha256 mismatch (truncated or
    corrupt), or `expect_config` differing from the saved config (listing the keys)."""
    path = resolve_checkpoint(path)
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a hirune checkpoint (no state.json)")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{state_file} is corrupt: {e}") from None
    if state.get("format") != "hirune-checkpoint-1":
        raise CheckpointError(f"{state_file}: unknown checkpoint format {state.get('format')!r}")
    tensors = {}
    for filename, digest in state["files"].items():
        file = path / filename
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {filename}")
        if _sha256(file) != digest:
            raise CheckpointError(f"checkpoint file {file} is truncated or corrupt (sha256 mismatch)")
        group = filename.removesuffix(".safetensors")
        if "/" not in filename and (groups is None or group in groups):
            tensors[group] = load_file(str(file))
    if expect_config is not None and state.get("config") != expect_config:
        saved = state.get("config") or {}
        keys = sorted(k for k in set(saved) | set(expect_config) if saved.get(k) != expect_config.get(k))
        raise CheckpointError(f"checkpoint {path} was written by another config; differing keys: {keys}")
    return tensors, state
