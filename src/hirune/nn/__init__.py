"""Neural-network building blocks shared by hirune's models."""

from .embeddings import timestep_embedding

__all__ = ["timestep_embedding"]
