"""One-file weights: a trained run's network as a single safetensors file.

    hirune export runs/big                       -> runs/big/weights.safetensors (EMA weights)
    hirune sample runs/big/weights.safetensors   (and `hirune eval`) read it like a run

The file holds the network's tensors (the EMA weights by default, the raw training
weights with use_ema=False; buffers from the model either way) and, in the safetensors
header, one JSON string `hirune` with what is needed to rebuild and sample the model: the
run config, the model config, the step, which weights these are, and an autoencoder's
latent statistics.  Whatever layout the checkpoint has (whole state, or
every rank's FSDP2 shards), the export is the same file; optimizer state is left behind.
Checkpoints and exports written before attention's q, k, v were separate modules are read
in today's names (`nn.attention.split_fused_projections`), so exporting one upgrades it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from ..nn.attention import split_fused_projections

FORMAT = "hirune-weights-1"


def checkpoint_weights(path: str | Path, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(network weights, checkpoint state) of a run directory, a checkpoint folder (either
    layout: whole state or every rank's shards) or an exported file.  The EMA holds the
    trained parameters; buffers (normalizing flows' ActNorm state, a VQ codebook's EMA
    statistics) come from the model's state.  use_ema=False: the raw training weights."""
    from ..distributed import sharded

    if Path(path).suffix == ".safetensors":
        weights, meta = read_weights(path)
        return split_fused_projections(weights), meta  # an export written before q, k, v were split
    path = resolve_checkpoint(path)
    tensors, state = load_checkpoint(path, groups=("model", "ema"))
    if state.get("layout") == "sharded":
        tensors["model"], tensors["ema"], _ = sharded.read_full(path, state["optimizer"]["shapes"])
    weights = {**tensors["model"], **tensors["ema"]} if use_ema else tensors["model"]
    return split_fused_projections(weights), state  # a checkpoint written before q, k, v were split


def export_weights(run: str | Path, out: str | Path | None = None, use_ema: bool = True) -> Path:
    """Write the network weights of `run` (a run directory, a checkpoint folder, or an
    exported file: copied) to `out` (default: RUN/weights.safetensors).  Returns the path
    written."""
    path = Path(run) if Path(run).suffix == ".safetensors" else resolve_checkpoint(run)
    weights, state = checkpoint_weights(path, use_ema)
    meta = {"format": FORMAT, "step": state["step"], "weights": state.get("weights", "ema" if use_ema else "model"),
            "config": state["config"], "run_config": state.get("run_config", {}),
            "model_config": state.get("model_config", {}), "latent_stats": state.get("latent_stats"),
            "text_tokenizer": state.get("text_tokenizer"),
            "data": state.get("data"), "base": state.get("base")}
    out = Path(out) if out is not None else path.parent.parent / "weights.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp), metadata={"hirune": json.dumps(meta)})
    tmp.replace(out)  # never a half-written file under the final name
    return out


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, metadata) of an exported file; CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("hirune", "null"))
            weights = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for foreign or truncated files
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a hirune export (no '{FORMAT}' header); "
                              "export a run with `hirune export RUN`")
    return weights, meta
