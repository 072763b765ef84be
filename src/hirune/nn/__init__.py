"""Neural-network building blocks shared by hirune's models."""

from .attention import Attention, CrossAttention, SelfAttention2d
from .embeddings import timestep_embedding
from .layers import group_norm, norm_groups, zero_

__all__ = ["Attention", "CrossAttention", "SelfAttention2d", "group_norm", "norm_groups", "timestep_embedding", "zero_"]
