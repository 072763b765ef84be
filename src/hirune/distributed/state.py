"""Whole (unsharded) training state under any strategy, so one checkpoint format serves
every world size: a run saved by N processes resumes on M (elastic), and `hirune sample`
reads it like a single-process run.

`full_state(model, optimizer, ema, world, strategy)` gathers model, EMA and optimizer state
on rank 0 (every rank must call it: FSDP2 gathers with collectives, ZeroRedundancyOptimizer
consolidates its shards); `load_full_state(model, optimizer, ema, world, strategy, ...)`
gives each rank what its strategy keeps (FSDP2 re-shards the full tensors,
ZeroRedundancyOptimizer keeps its partition).  Optimizer state is stored in
torch's standard form, keyed by the parameter's position in `model.parameters()`.

`split_fused_state` reads a state written before attention's q, k, v were separate modules
(`nn.attention.split_fused_projections`) in today's names and parameter positions.
"""

from __future__ import annotations

import torch

from ..nn.attention import split_fused_names, split_fused_projections
from .strategy import is_sharded


def by_position(optim_sd: dict, names: list[str]) -> dict:
    """FQN-keyed optimizer state (torch.distributed.checkpoint's full form) -> position-keyed."""
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[k]: v for k, v in optim_sd["state"].items()},
            "param_groups": [{**g, "params": [index[p] for p in g["params"]]} for g in optim_sd["param_groups"]]}


def _by_name(optim_sd: dict, names: list[str]) -> dict:
    return {"state": {names[int(k)]: v for k, v in optim_sd["state"].items()},
            "param_groups": [{**g, "params": [names[int(p)] for p in g["params"]]} for g in optim_sd["param_groups"]]}


def names_before_split(names: list[str], old_keys) -> list[str]:
    """The parameter order of a network before q, k, v were split, from today's order `names`
    and the keys of a state dict written then (`old_keys`): each part of a fused projection
    that `old_keys` holds fused (`a.q.weight` of `a.qkv.weight`) folded into the fused name
    at the place of its first part."""
    became = {new: old for old in old_keys for new in split_fused_names([old]) if new != old}
    return list(dict.fromkeys(became.get(n, n) for n in names))


def split_fused_state(model_sd: dict, ema_sd: dict, optim_sd: dict, names: list[str]) -> tuple[dict, dict, dict]:
    """(model, EMA, optimizer) state dicts of a whole checkpoint written before q, k, v were
    separate modules, in today's layout: every fused projection's tensors cut into q, k, v
    (or k, v) by `split_fused_projections` -- weights, biases, EMA shadows and AdamW
    moments row by row, `step` copied -- and the position-keyed optimizer state re-keyed
    from the old parameter order to `names` (today's `model.named_parameters()` order).
    The old order is today's with each fused group's parts folded back into the fused name
    at the place of its first part (the parameter order of the module as it was).  A state
    with nothing fused comes back as it is."""
    model_new = split_fused_projections(model_sd)
    if list(model_new) == list(model_sd):
        return model_sd, ema_sd, optim_sd
    old_names = names_before_split(names, model_sd)
    saved = [p for g in optim_sd["param_groups"] for p in g["params"]]
    if len(saved) != len(old_names):
        raise ValueError(f"the optimizer state holds {len(saved)} parameters where this network had "
                         f"{len(old_names)} before q, k, v were split")
    by_name = _by_name(optim_sd, old_names)
    flat = split_fused_projections({f"{n}.{stat}": v for n, entries in by_name["state"].items()
                                    for stat, v in entries.items()})
    state: dict[str, dict] = {}
    for key, value in flat.items():
        n, stat = key.rsplit(".", 1)
        state.setdefault(n, {})[stat] = value
    position = {n: i for i, n in enumerate(names)}
    groups = [{**g, "params": sorted(split_fused_names(g["params"]), key=lambda n: position[n])}
              for g in by_name["param_groups"]]
    return model_new, split_fused_projections(ema_sd), by_position({"state": state, "param_groups": groups}, names)


def full_state(model, optimizer, ema, world, strategy: str) -> tuple[dict, dict, dict] | None:
    """(model, EMA, optimizer) state dicts, whole, on rank 0; None on the other ranks."""
    main = world.main
    if not world.distributed:
        return model.state_dict(), ema.state_dict(), optimizer.state_dict()
    if strategy == "zero1" and world.tp == 1:
        optimizer.consolidate_state_dict(to=0)
    if not is_sharded(world, strategy):
        return (model.state_dict(), ema.state_dict(), optimizer.state_dict()) if main else None
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd = get_model_state_dict(model, options=options)
    optim_sd = get_optimizer_state_dict(model, optimizer, options=options)
    ema_sd = {n: (s.full_tensor() if hasattr(s, "full_tensor") else s).cpu()  # a collective per DTensor
              for n, s in ema.shadow.items()}
    if not main:
        return None
    names = [n for n, _ in model.named_parameters()]
    return model_sd, ema_sd, by_position(optim_sd, names)


def load_full_state(model, optimizer, ema, world, strategy: str, model_sd: dict, ema_sd: dict, optim_sd: dict,
                    ema_updates: int) -> None:
    """Every rank passes the whole state (each reads the checkpoint)."""
    if not is_sharded(world, strategy):
        model.load_state_dict(model_sd)
        ema.load_state_dict(ema_sd, ema_updates)
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.tensor import distribute_tensor

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=options)
    names = [n for n, _ in model.named_parameters()]
    set_optimizer_state_dict(model, optimizer, _by_name(optim_sd, names), options=options)
    missing = set(ema.shadow) ^ set(ema_sd)
    if missing:
        raise ValueError(f"EMA state does not match the model; differing names: {sorted(missing)[:5]}")
    with torch.no_grad():
        for n, s in ema.shadow.items():
            whole = ema_sd[n].to(s.device, s.dtype)
            s.copy_(distribute_tensor(whole, s.device_mesh, s.placements) if hasattr(s, "device_mesh") else whole)
    ema.num_updates = ema_updates


def check_same_checkpoint(world, path, state: dict) -> None:
    """Every rank must resume from the same checkpoint (a node that sees another file
    system, or a `latest` replaced between two reads, would otherwise train on silently
    different weights): compare (step, checkpoint name) across ranks before any step."""
    if not world.distributed:
        return
    import torch.distributed as dist

    mine = (int(state["step"]), str(path.name))
    everyone: list = [None] * world.size
    dist.all_gather_object(everyone, mine)
    differ = {r: v for r, v in enumerate(everyone) if v != everyone[0]}
    if differ:
        raise RuntimeError(f"ranks resume from different checkpoints: rank 0 has {everyone[0]}, "
                           + ", ".join(f"rank {r} has {v}" for r, v in differ.items()))
