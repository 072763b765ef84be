"""Sharded checkpoints for FSDP2 runs, through torch.distributed.checkpoint (DCP).

Gathering the whole state on rank 0 (`state.full_state`) needs the whole model, EMA and
AdamW state in one process's memory; that stops working for the models FSDP2 exists for.
Here every rank writes only its own shards, in parallel, and reads back only the pieces
its new shards cover, whatever the world size that wrote them (DCP plans the resharding):

    step_00001000/shards/shard-00001-model-00001-of-00001.safetensors   rank 0's pieces
                         shard-00002-model-00001-of-00001.safetensors   rank 1's pieces
                  rng.safetensors  state.json                             written by rank 0

Each shard file is plain safetensors; its JSON header records, for every piece, its offset
in the whole tensor (`DCP_SHARDING_INFO`).  No file is ever unpickled: DCP's default
writer pickles its metadata, so hirune uses its safetensors writer and reader
(`HuggingFaceStorageWriter(save_distributed=True)` / `HuggingFaceStorageReader`).
The non-tensor optimizer state (param groups) is in state.json.

Keys in the shards: `model.<fqn>`, `ema.<fqn>`, `optimizer.<fqn>.<exp_avg|exp_avg_sq|step>`.
`read_full` puts the pieces back together without any process group, for a single-process
resume, `hirune sample` and `hirune export`; `read_whole` gives them in the layout of a
whole-state checkpoint (optimizer state keyed by parameter position, the order that
state.json's `parameters` records).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..nn.attention import split_fused_names

SHARDS = "shards"


def _flat(model, optimizer, ema) -> tuple[dict[str, Tensor], dict]:
    """The sharded training state of this rank as one flat dict of (D)Tensors, and the
    optimizer's param groups (JSON-able, parameters named by FQN)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    flat = {f"model.{k}": v for k, v in get_model_state_dict(model).items()}
    flat.update({f"ema.{k}": v for k, v in ema.shadow.items()})
    optim = get_optimizer_state_dict(model, optimizer)  # creates AdamW state if none yet
    for fqn, entries in optim["state"].items():
        for name, value in entries.items():
            if not torch.is_tensor(value):
                raise TypeError(f"optimizer state {fqn}.{name} is not a tensor; sharded checkpoints hold tensors only")
            flat[f"optimizer.{fqn}.{name}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in optim["param_groups"]]
    return flat, {"param_groups": groups}


def save(model, optimizer, ema, folder: Path) -> dict:
    """Every rank writes its shards of the FSDP2-sharded `model`, its `optimizer` and its
    `ema` (`training.ema.EMA`) into `folder` (a collective).
    Returns the JSON-able optimizer metadata for state.json."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    flat, meta = _flat(model, optimizer, ema)
    dcp.save(flat, storage_writer=HuggingFaceStorageWriter(str(folder), save_distributed=True))
    # the whole shape of every tensor: the pieces alone cannot tell a missing last shard
    return {**meta, "shapes": {k: list(v.shape) for k, v in flat.items()}}


def holds_fused_projections(state: dict) -> bool:
    """Whether a sharded checkpoint (its state.json `state`) was written before attention's
    q, k, v were separate modules: its pieces are row ranges of the fused `qkv` / `kv`, which
    DCP cannot reshard into q, k, v, so it is read whole (`read_whole`) and split
    (`state.split_fused_state`) instead of through `load`."""
    names = state.get("parameters") or []
    return split_fused_names(names) != names


def load(model, optimizer, ema, checkpoint: Path, optimizer_meta: dict) -> None:
    """Every rank reads the pieces of `checkpoint`'s shards that its own shards cover (a
    collective); the writer's world size does not matter."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    flat, _ = _flat(model, optimizer, ema)
    saved = set(saved_keys(checkpoint))
    if saved != set(flat):
        diff = sorted(saved ^ set(flat))
        raise ValueError(f"sharded checkpoint {checkpoint} does not match this model; differing keys: {diff[:5]}")
    dcp.load(flat, storage_reader=HuggingFaceStorageReader(str(checkpoint / SHARDS)))
    set_model_state_dict(model, _group(flat, "model"))
    set_optimizer_state_dict(model, optimizer, _optimizer(flat, optimizer_meta))
    # the EMA shadows were loaded in place


def _group(flat: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in flat.items() if k.startswith(prefix + ".")}


def _optimizer(flat: dict[str, Tensor], meta: dict) -> dict:
    """FQN-keyed optimizer state dict from the flat `optimizer.<fqn>.<name>` entries."""
    state: dict[str, dict[str, Tensor]] = {}
    for key, value in _group(flat, "optimizer").items():
        fqn, name = key.rsplit(".", 1)
        state.setdefault(fqn, {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _headers(checkpoint: Path):
    from safetensors import safe_open

    files = sorted((checkpoint / SHARDS).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{checkpoint / SHARDS} holds no shard files")
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get("DCP_SHARDING_INFO", "{}"))
            yield file, f, info


def saved_keys(checkpoint: Path) -> list[str]:
    keys: set[str] = set()
    for _, f, _ in _headers(checkpoint):
        keys.update(f.keys())
    return sorted(keys)


def read_full(checkpoint: Path, shapes: dict[str, list[int]]
              ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """(model, EMA, optimizer-by-FQN) whole tensors of the given `shapes` (state.json's
    `optimizer.shapes`), assembled from every rank's pieces at their recorded offsets; no
    process group needed.  Every element of every tensor must be covered."""
    pieces: dict[str, list[tuple[list[int], Tensor]]] = {}
    for _, f, info in _headers(checkpoint):
        for key in f.keys():
            offsets = info.get(key, {}).get("saved_offsets", [0] * len(f.get_slice(key).get_shape()))
            pieces.setdefault(key, []).append((offsets, f.get_tensor(key)))
    if set(pieces) != set(shapes):
        raise ValueError(f"sharded checkpoint {checkpoint}: its shards hold {sorted(set(pieces) ^ set(shapes))[:5]} "
                         "where state.json does not, or the reverse (a shard is missing)")
    flat = {}
    for key, parts in pieces.items():
        shape = shapes[key]
        whole = torch.empty(shape, dtype=parts[0][1].dtype)
        covered = torch.zeros(shape, dtype=torch.bool)
        for offsets, piece in parts:
            where = tuple(slice(o, o + n) for o, n in zip(offsets, piece.shape))
            whole[where] = piece
            covered[where] = True
        if not bool(covered.all()):
            raise ValueError(f"sharded checkpoint {checkpoint}: the pieces of {key} do not cover it (a shard is missing)")
        flat[key] = whole
    return _group(flat, "model"), _group(flat, "ema"), _optimizer(flat, {"param_groups": []})["state"]


def read_whole(checkpoint: Path, state: dict) -> tuple[dict[str, Tensor], dict[str, Tensor], dict]:
    """(model, EMA, optimizer) as a whole-state checkpoint holds them: the optimizer state
    dict keyed by parameter position (state.json's `parameters` gives the order)."""
    from .state import by_position

    model, ema, optim = read_full(checkpoint, state["optimizer"]["shapes"])
    return model, ema, by_position({"state": optim, **state["optimizer"]}, state["parameters"])
