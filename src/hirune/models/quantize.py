"""Vector quantisation (van den Oord et al. 2017, "Neural Discrete Representation Learning",
VQ-VAE; Esser et al. 2021, VQGAN).

A codebook of K vectors e_1..e_K in R^D.  Each D-vector z_e of the encoder's map is
replaced by its nearest code, z_q = e_k with k = argmin_j ||z_e - e_j||^2 (VQ-VAE eq. 1-2).
argmin has no gradient, so the decoder's gradient is copied to the encoder unchanged
(the straight-through estimator): z_q = z_e + sg(e_k - z_e), equal to e_k in value and
to z_e in gradient.  The codebook learns in one of two ways:

    update="loss"  VQ-VAE eq. 3: codebook loss ||sg(z_e) - e_k||^2 moves the codes, the
                   commitment loss ||z_e - sg(e_k)||^2 (weighted by beta in the training
                   loss) keeps the encoder close to the codes it picked;
    update="ema"   VQ-VAE appendix A.1 (eqs. 6-8), as in Razavi et al. 2019 (VQ-VAE-2):
                   exponential moving averages of each code's count N_k and sum m_k of its
                   assigned vectors, e_k = m_k / N_k; no codebook loss (the commitment loss
                   stays).  The counts are Laplace-smoothed (as in Sonnet) and start at
                   N_k = 1, m_k = e_k, so an unused code stays where it is instead of
                   being divided by a zero count.

Initialisation.  Codes drawn uniformly in +-1/K (taming-transformers) sit far inside the
encoder's outputs; the few that win the first batches follow the data and the rest are
never picked again (5 of 256 codes used after an MNIST run).  With init="kmeans" the
codes start as k-means centroids of the first training batch's vectors (Zeghidour et al.
2021, SoundStream, sec. 3.2), once: the buffer `initialized` records it in checkpoints.

Codebook health is reported as the usage (fraction of codes picked in the batch) and the
perplexity exp(H(p)) of the code frequencies p: K when every code is equally used, 1
when one code takes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CODEBOOK_UPDATES = ("loss", "ema")
CODEBOOK_INITS = ("kmeans", "uniform")


@dataclass
class Quantized:
    z_q: Tensor              # (B, D, h, w) the codes, straight-through: the gradient goes to z_e
    indices: Tensor          # (B, h, w) int64, the chosen code of each position
    codebook_loss: Tensor    # (B,) mean ||sg(z_e) - e_k||^2 per example (zero under EMA updates)
    commitment_loss: Tensor  # (B,) mean ||z_e - sg(e_k)||^2 per example
    perplexity: Tensor       # () exp(entropy of the code frequencies in this batch)
    usage: Tensor            # () fraction of the K codes picked in this batch


def nearest_code(flat: Tensor, codes: Tensor) -> Tensor:
    """Index of the nearest row of codes (K, D) for each row of flat (N, D), by
    ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 (ties: the lowest index)."""
    codes = codes.to(flat.dtype)
    distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(1)[None]
    return distances.argmin(1)


def kmeans(flat: Tensor, k: int, iterations: int = 10) -> Tensor:
    """k centroids (k, D) of the rows of flat (N, D) by Lloyd's algorithm, started from k
    evenly spaced rows (deterministic); a centroid that loses all its points stays put."""
    centroids = flat[torch.linspace(0, len(flat) - 1, k, device=flat.device).long()].clone()
    for _ in range(iterations):
        indices = nearest_code(flat, centroids)
        counts = torch.bincount(indices, minlength=k).to(flat.dtype)[:, None]
        sums = torch.zeros_like(centroids).index_add_(0, indices, flat)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def perplexity(indices: Tensor, num_codes: int) -> Tensor:
    """exp(-sum_k p_k log p_k) of the code frequencies p of `indices` (any shape)."""
    p = torch.bincount(indices.flatten(), minlength=num_codes).double() / indices.numel()
    return torch.exp(-(p * p.clamp(min=1e-30).log()).sum())


class VectorQuantizer(nn.Module):
    """quantizer(z_e: (B, D, h, w)) -> Quantized.  See the module docstring.

    The codebook `embedding` (K, D) is a parameter; under update="ema" it has no gradient
    and is rewritten from the buffers `cluster_size` (K,) and `embed_sum` (K, D) after each
    training-mode forward (all-reduced over the processes of a distributed run, so every
    rank keeps the same codebook)."""

    def __init__(self, num_codes: int, dim: int, update: str = "loss", decay: float = 0.99,
                 eps: float = 1e-5, init: str = "kmeans"):
        super().__init__()
        if update not in CODEBOOK_UPDATES:
            raise ValueError(f"codebook update {update!r} is not valid; valid: {list(CODEBOOK_UPDATES)}")
        if init not in CODEBOOK_INITS:
            raise ValueError(f"codebook init {init!r} is not valid; valid: {list(CODEBOOK_INITS)}")
        self.num_codes, self.dim, self.update, self.decay, self.eps = num_codes, dim, update, decay, eps
        # taming-transformers' init: uniform in +-1/K
        codes = torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        self.embedding = nn.Parameter(codes, requires_grad=update == "loss")
        if update == "ema":
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_sum", codes.clone())
        self.register_buffer("initialized", torch.tensor(init == "uniform"))

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code of each row of flat (N, D)."""
        return nearest_code(flat, self.embedding)

    @torch.no_grad()
    def kmeans_init(self, flat: Tensor) -> None:
        """Codes <- k-means centroids of flat (N, D) (rank 0's, in a distributed run)."""
        centroids = kmeans(flat, self.num_codes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(centroids, 0)
        self.embedding.copy_(centroids)
        if self.update == "ema":
            self.embed_sum.copy_(centroids)
            self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes of indices (B, h, w) as a map (B, D, h, w)."""
        return self.embedding[indices].permute(0, 3, 1, 2)

    def forward(self, z_e: Tensor) -> Quantized:
        B, D, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, D)           # (B h w, D)
        if self.training and not bool(self.initialized):
            self.kmeans_init(flat.detach().float())
        with torch.no_grad():
            indices = self.nearest(flat.float())
        if self.training and self.update == "ema":
            self.ema_update(flat.detach().float(), indices)
        e_k = self.lookup(indices.view(B, h, w)).to(z_e.dtype)  # (B, D, h, w)
        codebook = ((z_e.detach() - e_k) ** 2).flatten(1).mean(1)
        if self.update == "ema":
            codebook = torch.zeros_like(codebook)
        commitment = ((z_e - e_k.detach()) ** 2).flatten(1).mean(1)
        z_q = z_e + (e_k - z_e).detach()                         # straight-through estimator
        counts = torch.bincount(indices, minlength=self.num_codes)
        return Quantized(z_q, indices.view(B, h, w), codebook, commitment,
                         perplexity(indices, self.num_codes).float(),
                         (counts > 0).float().mean())

    @torch.no_grad()
    def ema_update(self, flat: Tensor, indices: Tensor) -> None:
        """VQ-VAE appendix A.1: N_k <- g N_k + (1 - g) n_k, m_k <- g m_k + (1 - g) sum of the
        vectors assigned to k, e_k = m_k / N~_k with Laplace-smoothed counts
        N~_k = (N_k + eps) / (N + K eps) N, N = sum_k N_k.  flat: (N, D); indices: (N,)."""
        onehot = F.one_hot(indices, self.num_codes).to(flat.dtype)  # (N, K)
        counts, sums = onehot.sum(0), onehot.t() @ flat              # (K,), (K, D)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        self.cluster_size.lerp_(counts, 1 - self.decay)
        self.embed_sum.lerp_(sums, 1 - self.decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
        self.embedding.copy_(self.embed_sum / smoothed[:, None])
