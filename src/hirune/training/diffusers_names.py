"""hirune's parameter names under diffusers' names, and back: the DiT and the KL autoencoder.

    dit_to_diffusers(dit)                  DiT state dict -> DiTTransformer2DModel's
    autoencoder_to_diffusers(sd, ...)      KLAutoencoder state dict -> AutoencoderKL's
    diffusers_to_dit(sd, depth)            the inverse of dit_to_diffusers

Same functions, different names (shown to float64 round-off by tests/models/test_dit.py and
test_autoencoder.py).  What differs is only where a tensor lives:

* DiT.  diffusers keeps a copy of the time MLP and the class table inside every block
  (`transformer_blocks.i.norm1.emb`); hirune has one of each (`time_embed`, `class_embed`), so
  the export writes the same tensors into every block.  q, k, v are to_q / to_k / to_v, the
  attention output to_out.0, the MLP ff.net.0.proj / ff.net.2, the block's adaLN linear
  norm1.linear, the final adaLN and linear proj_out_1 / proj_out_2, the patch embedding
  pos_embed.proj.  An unconditional hirune DiT has no class table; diffusers' DiT always has
  one, so it gets a zero table of 2 rows (label 0 and the null label): the same function.
* KL autoencoder (LDM's layout, as diffusers' AutoencoderKL): the levels' `blocks.level.i` are
  `down_blocks` / `up_blocks`.level.`resnets`.i, the level's last module its down- or
  upsampler, `mid.0, 1, 2` resnet / attention / resnet, `out.0, 2` conv_norm_out / conv_out, a
  resnet's `skip` conv_shortcut; attention's q, k, v, proj, norm to_q, to_k, to_v, to_out.0,
  group_norm.
"""

from __future__ import annotations

import torch
from torch import Tensor

# per DiT block: diffusers' name -> hirune's (under blocks.i.)
_DIT_BLOCK = {"norm1.linear": "adaLN_modulation.1", "attn1.to_q": "attn.q", "attn1.to_k": "attn.k",
              "attn1.to_v": "attn.v", "attn1.to_out.0": "attn.proj", "ff.net.0.proj": "mlp.0", "ff.net.2": "mlp.2"}
# inside every block's norm1.emb: diffusers' copy of hirune's top-level time MLP
_DIT_TIME = {"norm1.emb.timestep_embedder.linear_1": "time_embed.0",
             "norm1.emb.timestep_embedder.linear_2": "time_embed.2"}
_DIT_TOP = {"pos_embed.proj": "patch_embed.proj", "proj_out_1": "final_layer.adaLN_modulation.1",
            "proj_out_2": "final_layer.linear"}
_CLASS_TABLE = "norm1.emb.class_embedder.embedding_table.weight"


def dit_to_diffusers(sd: dict[str, Tensor], depth: int, hidden_size: int) -> dict[str, Tensor]:
    """A hirune DiT state dict (`model.state_dict()`, depth blocks of width hidden_size) under
    DiTTransformer2DModel's names; every diffusers weight is given (a strict load passes)."""
    out = {}
    for theirs, ours in _DIT_TOP.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = sd[f"{ours}.{p}"]
    table = sd.get("class_embed.weight")
    if table is None:  # unconditional: a zero table for label 0 and the null label (see the docstring)
        table = torch.zeros(2, hidden_size, dtype=sd["time_embed.0.weight"].dtype)
    for i in range(depth):
        names = {**_DIT_TIME, **{k: f"blocks.{i}.{v}" for k, v in _DIT_BLOCK.items()}}
        for theirs, ours in names.items():
            for p in ("weight", "bias"):
                out[f"transformer_blocks.{i}.{theirs}.{p}"] = sd[f"{ours}.{p}"]
        out[f"transformer_blocks.{i}.{_CLASS_TABLE}"] = table
    return out


def diffusers_to_dit(sd: dict[str, Tensor], depth: int, conditional: bool) -> dict[str, Tensor]:
    """The inverse of `dit_to_diffusers`: a DiTTransformer2DModel state dict under hirune's
    names (the time MLP and class table from block 0; diffusers' blocks hold equal copies
    when it was trained as DiT is, each block's own otherwise, which hirune cannot hold)."""
    out = {}
    for theirs, ours in _DIT_TOP.items():
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    for theirs, ours in _DIT_TIME.items():
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = sd[f"transformer_blocks.0.{theirs}.{p}"]
    if conditional:
        out["class_embed.weight"] = sd[f"transformer_blocks.0.{_CLASS_TABLE}"]
    for i in range(depth):
        for theirs, ours in _DIT_BLOCK.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = sd[f"transformer_blocks.{i}.{theirs}.{p}"]
    return out


def autoencoder_to_diffusers(sd: dict[str, Tensor], num_res_blocks: int) -> dict[str, Tensor]:
    """A hirune KLAutoencoder state dict under diffusers' AutoencoderKL names (the module
    docstring says what maps to what).  Tensors outside the encoder, decoder and the two
    1 x 1 convs (a discriminator, a perceptual net) are left out: AutoencoderKL has none."""
    out = {}
    for name, v in sd.items():
        parts = name.split(".")
        top, rest = parts[0], parts[1:]
        if top in ("quant_conv", "post_quant_conv"):
            out[name] = v
        elif top not in ("encoder", "decoder"):
            continue
        elif rest[0] == "conv_in":
            out[name] = v
        elif rest[0] == "out":
            out[f"{top}.{'conv_norm_out' if rest[1] == '0' else 'conv_out'}.{rest[2]}"] = v
        elif rest[0] == "mid":
            block, tail = int(rest[1]), rest[2:]
            if block == 1:
                names = {"q": "to_q", "k": "to_k", "v": "to_v", "proj": "to_out.0", "norm": "group_norm"}
                out[f"{top}.mid_block.attentions.0.{names[tail[0]]}.{tail[1]}"] = v
            else:
                out[f"{top}.mid_block.resnets.{block // 2}.{_resnet_name(tail)}"] = v
        else:
            level, index, tail = int(rest[1]), int(rest[2]), rest[3:]
            blocks = num_res_blocks + (1 if top == "decoder" else 0)
            group = "down_blocks" if top == "encoder" else "up_blocks"
            if index < blocks:
                out[f"{top}.{group}.{level}.resnets.{index}.{_resnet_name(tail)}"] = v
            else:
                sampler = "downsamplers" if top == "encoder" else "upsamplers"
                out[f"{top}.{group}.{level}.{sampler}.0.{'.'.join(tail)}"] = v
    return out


def _resnet_name(tail: list[str]) -> str:
    return ".".join(["conv_shortcut" if tail[0] == "skip" else tail[0], *tail[1:]])


def diffusers_to_autoencoder(sd: dict[str, Tensor], our_names: list[str], num_res_blocks: int) -> dict[str, Tensor]:
    """The inverse of `autoencoder_to_diffusers`: an AutoencoderKL state dict under the names
    `our_names` of a hirune KLAutoencoder of the same architecture (the mapping is one to one,
    so it is read off `autoencoder_to_diffusers` applied to the names themselves)."""
    theirs_of = autoencoder_to_diffusers({name: name for name in our_names}, num_res_blocks)
    return {ours: sd[theirs] for theirs, ours in theirs_of.items()}
