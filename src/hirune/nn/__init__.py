"""Neural-network building blocks shared by hirune's models."""

from .attention import Attention, CrossAttention, SelfAttention2d
from .context import (ContextEmbedding, CrossAttention2d, TextTransformer, check_context, check_word_fields,
                      masked_mean)
from .conv import Conv1x1, upsample_conv, upsample_nearest
from .embeddings import MicroEmbedding, add_micro, timestep_embedding
from .layers import group_norm, norm_groups, zero_
from .patches import PatchEmbed, check_patch_size, patchify, sincos_position_embedding, unpatchify

__all__ = ["Attention", "ContextEmbedding", "Conv1x1", "CrossAttention", "CrossAttention2d", "MicroEmbedding",
           "TextTransformer", "add_micro", "check_context", "check_word_fields", "masked_mean", "PatchEmbed",
           "SelfAttention2d", "check_patch_size", "group_norm", "norm_groups", "patchify",
           "sincos_position_embedding", "timestep_embedding", "unpatchify", "upsample_conv", "upsample_nearest",
           "zero_"]
