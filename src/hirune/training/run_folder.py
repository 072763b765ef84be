"""A run folder and its one owner.

Training writes into a run folder (config.json, metrics.jsonl, checkpoints/, samples/,
references/) and nothing else; `own(folder, resume)` is what the loop holds while it does:

    - one owner at a time: a lock file `.lock` with the holder's host, PID and start time,
      taken atomically; a lock whose process is gone (same host) is taken over, with a
      message; a live one is refused, naming the holder;
    - the folder must be new, empty, or a hirune run: a non-empty folder that is not one
      (an unrelated config.json, say) is refused, and no file of the run may be a symbolic
      link (nothing is written through one);
    - temporary files of writers that died are removed;
    - what to start from: a run that holds progress (a checkpoint, or logged steps) needs
      resume=true, and resumes from its latest checkpoint, or where `latest` is missing or
      broken, from the newest complete one, saying which (`checkpoint.find_checkpoint`);
      checkpoints of which none is complete are refused rather than trained over; a run
      killed before its first checkpoint resumes from step 0, saying so;
    - metrics.jsonl is cut back to the step a run resumes from, so no step is logged twice.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint import checkpoints, find_checkpoint

LOCK = ".lock"
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints", "samples", "references", "eval.json", "loss.png",
             "tensorboard")


class RunFolderError(RuntimeError):
    """A run folder that cannot be used as asked (held by another process, not a run, ...)."""


@dataclass(frozen=True)
class Claim:
    """What `own` found: the folder, the checkpoint to resume from (None: a new run) and
    anything the user should be told about it."""

    folder: Path
    resume_from: Path | None
    note: str | None = None


@contextmanager
def own(folder: str | Path, resume: bool, main: bool = True) -> Iterator[Claim]:
    """Hold `folder` for training (see the module docstring); `main`: this process writes
    (rank 0), the others only learn where to resume from."""
    folder = Path(folder)
    check_folder(folder)
    if not main:
        yield decide(folder, resume)
        return
    folder.mkdir(parents=True, exist_ok=True)
    acquire(folder)
    try:
        remove_debris(folder)
        claim = decide(folder, resume)
        if claim.note:
            print(f"[hirune] {claim.note}", file=sys.stderr, flush=True)
        yield claim
    finally:
        release(folder)


def is_hirune_config(path: Path) -> bool:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and {"dataset", "model"} <= set(values)


def check_folder(folder: Path) -> None:
    """Refuse a folder that is not a directory, a non-empty folder that is not a hirune
    run, and run files that are symbolic links."""
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"out={folder} is a file, not a folder")
    if not folder.is_dir():
        return
    for name in (*RUN_FILES, "checkpoints/latest"):
        if (folder / name).is_symlink():
            raise RunFolderError(f"{folder / name} is a symbolic link; a run writes only into its own folder, "
                                 "never through a link")
    config = folder / "config.json"
    if config.exists() and not is_hirune_config(config):
        raise RunFolderError(f"out={folder} holds a config.json that hirune did not write; choose another out=")
    entries = [p.name for p in folder.iterdir() if p.name != LOCK]
    if entries and not any(name in RUN_FILES for name in entries):
        raise RunFolderError(f"out={folder} is a non-empty folder that is not a hirune run (no config.json, "
                             f"metrics.jsonl or checkpoints/; it holds {sorted(entries)[:3]}...); choose an empty "
                             "or new folder")


def _record(line: str) -> dict | None:
    """One metrics.jsonl line as its record, its step an int; None for a line that is
    unreadable or has no step."""
    try:
        record = json.loads(line)
        return {**record, "step": int(record["step"])}
    except (ValueError, KeyError, TypeError):
        return None


def _step(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a line that is unreadable or has none."""
    record = _record(line)
    return None if record is None else record["step"]


def logged_records(folder: Path) -> list[dict]:
    """The records metrics.jsonl holds, in order (unreadable lines and lines without a step skipped)."""
    path = folder / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [record for record in map(_record, lines) if record is not None]


def logged_steps(folder: Path) -> list[int]:
    """The steps metrics.jsonl holds (unreadable lines are skipped)."""
    return [record["step"] for record in logged_records(folder)]


def decide(folder: Path, resume: bool) -> Claim:
    """Where a run in `folder` starts (see the module docstring)."""
    steps, folders = logged_steps(folder), checkpoints(folder)
    progress = bool(steps or folders)
    found, problem = find_checkpoint(folder) if progress else (None, None)
    if not resume:
        if progress:
            where = f"its newest checkpoint is {found.name}" if found else f"it logged steps up to {max(steps or [0])}"
            raise FileExistsError(f"{folder} already holds a run ({where}); pass resume=true to continue it or "
                                  "choose another out=")
        return Claim(folder, None)
    if found is not None:
        note = f"{problem}; resuming from {found.name}, the newest complete checkpoint" if problem else None
        return Claim(folder, found, note)
    if folders:  # checkpoints, none of them complete: they may still be worth recovering by hand
        raise RunFolderError(f"resume=true, but none of the checkpoints in {folder / 'checkpoints'} is complete"
                             + (f" ({problem})" if problem else "") + "; move the folder away to start it over")
    if steps:  # killed before its first checkpoint: nothing to lose but the log, which is cut back
        return Claim(folder, None, f"{folder} has no checkpoint (it logged steps up to {max(steps)}): "
                                   "resuming from step 0")
    return Claim(folder, None, f"nothing to resume in {folder}: starting a new run")


def truncate_metrics(folder: Path, step: int) -> int:
    """Cut metrics.jsonl back to the lines of steps <= `step` (a resumed run logs the rest
    again); returns how many lines were dropped.  Written atomically."""
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if (logged := _step(line)) is not None and logged <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(f".metrics.jsonl.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)
    return len(lines) - len(kept)


def remove_debris(folder: Path) -> None:
    """The temporary files and folders of writers that died (the owner holds the lock, so
    no live writer has any): checkpoints/.tmp-*, checkpoints/.latest.tmp, .*.tmp* files."""
    root = folder / "checkpoints"
    for path in [*root.glob(".tmp-*"), *root.glob(".*.tmp"), *folder.glob(".*.tmp*")]:
        if path.name == LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# --- the lock ------------------------------------------------------------------------------
def _holder() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def acquire(folder: Path) -> None:
    """Take `folder`'s lock, or take over a stale one; RunFolderError if a live process holds it."""
    path = folder / LOCK
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:  # unreadable: being written right now, or left half-written long ago
                if time.time() - path.stat().st_mtime < 60:
                    raise RunFolderError(f"{folder} is being claimed by another process right now") from None
            elif holder.get("host") != socket.gethostname():
                raise RunFolderError(f"{folder} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                                     f"{holder.get('since')}; if nothing trains there any more, remove {path}"
                                     ) from None
            elif _alive(int(holder.get("pid", -1))):
                raise RunFolderError(f"{folder} is in use by pid {holder['pid']} (this host) since "
                                     f"{holder.get('since')}; wait for it or choose another out=") from None
            else:
                print(f"[hirune] taking over {folder}: its lock was held by pid {holder.get('pid')}, which is gone",
                      file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(_holder(), f)
        return
    raise RunFolderError(f"could not take the lock of {folder}")


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def release(folder: Path) -> None:
    """Remove the lock, where this process holds it."""
    path = folder / LOCK
    holder = _read_lock(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
