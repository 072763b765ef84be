"""Checkpoints: safetensors for tensors, JSON for everything else, never pickle.

A run directory holds one folder per saved step and a `latest` file naming the newest
complete one:

    run/checkpoints/step_00001000/  model.safetensors  ema.safetensors  optimizer.safetensors
                                    state.json   (config, step, RNG, optimizer hyper-parameters,
                                                  sha256 of every tensor file)
                                    state.sha256 (sha256 of state.json itself)
    run/checkpoints/latest          "step_00001000"

A run sharded over several processes (FSDP2) may instead keep its model, EMA and
optimizer as torch.distributed.checkpoint shards, one safetensors file per rank with the
offsets of each piece in its JSON header (`step_.../shards/`, see
`hirune.distributed.sharded`); state.json then says `"layout": "sharded"` and hashes
those files too.

A save writes into a temporary folder, fsyncs, renames it into place, and only then
replaces `latest` (os.replace is atomic), so a crash or kill -9 at any point leaves the
previous checkpoint as the latest; a save that fails (a full disk) removes its temporary
folder and says which checkpoint stays the latest.  `latest` may only name a step folder
beside it.  A load verifies every file's sha256 (state.json's too, where the checkpoint
has its state.sha256) and the config, and names what is wrong.  `find_checkpoint` is what
a resume uses: the latest, or where that is missing or broken, the newest complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

LATEST = "latest"
STATE_HASH = "state.sha256"
STEP_NAME = re.compile(r"step_\d{8}")


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


def weights_fingerprint(tensors: dict[str, Tensor]) -> str:
    """A short name of a set of weights: the first 16 hex digits of the sha256 of their
    safetensors serialisation (keys sorted, no metadata), the same wherever they were read
    from (a checkpoint's EMA, an export)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())})
    return hashlib.sha256(data).hexdigest()[:16]


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
    try:
        _write(tmp, step, tensors, state)
    except Exception as e:  # a full disk, a vanished folder: nothing half-written stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(run_dir)
        raise CheckpointError(f"could not write checkpoint {name} into {root}: {e}; "
                              f"{'the latest stays ' + kept.name if kept else 'no checkpoint was written before'}"
                              ) from e
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / LATEST)  # the commit point
    _fsync_dir(root)
    if keep is not None:
        done = sorted(p for p in root.iterdir() if p.is_dir() and STEP_NAME.fullmatch(p.name))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _write(folder: Path, step: int, tensors: dict[str, dict[str, Tensor]], state: dict) -> None:
    """The files of a checkpoint, fsynced: one safetensors file per group, state.json with
    every file's sha256, and state.sha256 with state.json's."""
    for group, flat in tensors.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in flat.items()}, str(folder / f"{group}.safetensors"))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    hashes = {p.relative_to(folder).as_posix(): _sha256(p) for p in files}
    meta = {"format": "hirune-checkpoint-1", "step": step, "files": hashes, **state}
    with open(folder / "state.json", "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    with open(folder / STATE_HASH, "w") as f:
        f.write(_sha256(folder / "state.json") + "  state.json\n")
        f.flush()
        os.fsync(f.fileno())
    for path in files:
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, where it names a step folder beside it that exists;
    else None.  Its files are not verified here (`find_checkpoint`, `load_checkpoint` do)."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    if not STEP_NAME.fullmatch(name):  # never a path: ../../x, /etc, a symlink's target
        return None
    path = root / name
    return path if path.is_dir() and not path.is_symlink() else None


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's step folders, oldest first (complete or not)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def find_checkpoint(run_dir: str | Path, thorough: bool = True) -> tuple[Path | None, str | None]:
    """(the checkpoint to read, what was wrong on the way or None): the one `latest` names
    where it is complete and intact, else the newest step folder that is, else None.
    `thorough` hash-checks every file (a resume); else state.json and the files' presence
    (a load for inference, which then verifies what it reads)."""
    latest, problem = latest_checkpoint(run_dir), None
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if latest is None and pointer.is_file():
        problem = f"{pointer} names {pointer.read_text().strip()!r}, which is not a step folder there"
    for candidate in ([latest] if latest is not None else []) + list(reversed(checkpoints(run_dir))):
        try:
            _check(candidate, thorough)
        except CheckpointError as e:
            problem = problem or str(e)
            continue
        return candidate, problem
    return None, problem


def _check(path: Path, thorough: bool) -> None:
    if thorough:
        load_checkpoint(path, groups=())
        return
    state = _read_state(path)
    missing = [f for f in state["files"] if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {missing[0]}")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the checkpoint a run directory holds (`find_checkpoint`:
    the latest, or with a warning naming the problem, the newest complete one)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        found, problem = find_checkpoint(path, thorough=False)
        if found is None:
            raise CheckpointError(f"no complete checkpoint in {path}" + (f": {problem}" if problem else ""))
        if problem:
            warnings.warn(f"{problem}; reading {found} instead", stacklevel=2)
        path = found
    return path


def _read_state(path: Path) -> dict:
    """A checkpoint's state.json, checked: its own hash (where state.sha256 exists), its
    format, its step and its file list (names inside the folder)."""
    state_file = path / "state.json"
    if not state_file.is_file():
        raise CheckpointError(f"{path} is not a hirune checkpoint (no state.json)")
    state_hash = path / STATE_HASH
    if state_hash.is_file() and state_hash.read_text().split()[:1] != [_sha256(state_file)]:
        raise CheckpointError(f"{state_file} is corrupt or was edited (sha256 mismatch with {STATE_HASH})")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_file} is corrupt: {e}") from None
    if not isinstance(state, dict) or state.get("format") != "hirune-checkpoint-1":
        raise CheckpointError(f"{state_file}: unknown checkpoint format "
                              f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r}")
    files, step = state.get("files"), state.get("step")
    if not isinstance(files, dict) or not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{state_file} is incomplete: it needs 'files' (file -> sha256) and 'step' (an int)")
    if any(not isinstance(f, str) or f.startswith("/") or ".." in f.split("/") for f in files):
        raise CheckpointError(f"{state_file} names files outside its checkpoint folder")
    return state


def load_checkpoint(path: str | Path, expect_config: dict | None = None, groups: tuple[str, ...] | None = None
                    ) -> tuple[dict[str, dict[str, Tensor]], dict]:
    """Read a checkpoint folder (or a run directory: its latest).  Returns (tensors, state):
    the tensors of every top-level group file, or of `groups` only (every file is verified;
    a sharded checkpoint's shards are left on disk for `hirune.distributed.sharded` to read).

    Raises CheckpointError naming the problem: missing files, a sha256 mismatch (truncated or
    corrupt), or `expect_config` differing from the saved config (listing the keys)."""
    path = resolve_checkpoint(path)
    state = _read_state(path)
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
