"""CogVideoX's expert transformer (Yang et al. 2024, "CogVideoX: Text-to-Video Diffusion
Models with An Expert Transformer", sec. 2.2): a video DiT whose text and video tokens share
one sequence under full 3-D attention, each modality with its own adaptive LayerNorm.

    x (B, C, T, H, W) latents -> each frame cut into p x p patches (space only; the VAE
    already compressed time) -> N = T (H/p) (W/p) video tokens (B, N, D), frame after frame
    text (B, M, context_dim) -> Linear -> M text tokens (B, M, D)
    one sequence [text, video] -> `depth` expert blocks -> the video tokens -> LayerNorm ->
    adaLN -> Linear to p p out_channels -> unpatchify each frame -> (B, out_channels, T, H, W)

Patchify (sec. 2.2).  A p x p convolution with stride p on every frame (`PatchEmbed`),
tokens in `patchify`'s order within a frame, frame after frame: n = (f rows + i) cols + j.

Positions: 3-D RoPE (sec. 2.2, "3D-RoPE"; `hirune.nn.rope`).  The queries and keys of the
video tokens are rotated per head, t : y : x = 2/8 : 3/8 : 3/8 of the channels, after the
qk LayerNorm; the text tokens carry no position (their encoder already read their order).
`rope_scaling` chooses integer coordinates ("extrapolate") or coordinates scaled onto the
base grid `rope_base` ("interpolate"): CogVideoX trains progressively from low to high
resolution (sec. 3.2), and this is how the positions of a new resolution relate to the old
(`families.progressive`: a run started from one at a lower resolution).
`positions="learned"` is the ablation: an absolute table over (t, y, x) up to
(sample_frames, sample_size / p, sample_size / p) tokens, added to the video tokens (started
as a 3-D sin-cos table: t on the first D/4 channels, the 2-D (x | y) table on the rest, as
CogVideoX's `get_3d_sincos_pos_embed`; learned thereafter), and no rotation.

The expert block (sec. 2.2, "Expert Transformer Block").  c = MLP(sinusoids(t time_scale))
is a (B, E) vector (E = time_embed_dim; D sinusoids, as CogVideoX).  Each block has one
self-attention and one MLP shared by both modalities, with DiT's adaLN before each (Peebles
& Xie 2023, "adaLN-Zero") -- but the modulation is an expert per modality:

    shift, scale, gate, text_shift, text_scale, text_gate = Linear(SiLU(c))       (norm1)
    v, s = LN(video) (1 + scale) + shift,  LN(text) (1 + text_scale) + text_shift
    a = Attention([s, v])                                     one sequence, full 3-D attention
    video, text = video + gate a_video,  text + text_gate a_text
    the same again (norm2) around the MLP

The text and the video live in different feature spaces; the experts align them at the
cost of 3D more numbers per LayerNorm (`experts=False`: one (shift, scale, gate) for both,
the ablation).  A network without text has only video tokens and one modulation.  Full
attention (sec. 2.2, "3D Full Attention") is the plain attention over the whole sequence,
every frame with every frame, rather than separate spatial and temporal attention.
qk-norm: a LayerNorm on each head's queries and keys (`hirune.nn.Attention`), as CogVideoX.

The final layer is CogVideoX's: a LayerNorm (`norm_final`) on the video tokens, then adaLN
(shift, scale from SiLU(c), with a LayerNorm of its own), then the linear to the patches.

Initialisation.  hirune's default is DiT's adaLN-Zero, everywhere: xavier-uniform linears,
normal(0.02) time MLP, and zeros in every block's modulation (all gates 0: each block starts
as the identity) and in the final modulation and linear, so the initial output is exactly
0.  CogVideoX's released code (SAT) zeros the block modulations too, but starts its final
linear xavier-uniform and leaves the final modulation at PyTorch's default; diffusers'
`CogVideoXTransformer3DModel` uses PyTorch's defaults throughout (it is meant to load
weights).  The function is the same for the same weights: diffusers' model with these
weights gives this output (tests/models/test_cogvideox.py maps them one to one).  What
diffusers needs to match: flip_sin_to_cos=True and freq_shift=0 (its defaults; hirune's
sinusoids are [cos | sin] with frequencies exp(-ln(10^4) k / (D/2))), norm_eps = this
norm_eps (default 1e-5 in both), attention_bias=True, patch_size_t=None, the RoPE table its
pipeline builds (integers on the base grid, space mapped onto it otherwise), and t as the
same number (time_scale=1, or t already scaled).

Frame packing (sec. 3.1, "Multi-Resolution Frame Pack").  Images and videos of different
lengths train in one batch: `frames` (B,) int64 gives each example's real latent frames
(an image is a one-frame video), the rest of the T frames being padding.  The padding
frames' tokens are masked as keys in every attention, as padded caption tokens are, and
their outputs are 0; each example's real tokens then get the output they would get alone.
Under "interpolate" each example's time axis is interpolated over its own frame count.

Reference attention (DDIM inversion of video; the LittleNyima development note on CogVideoX).
Sampling from DDIM-inverted noise under another prompt, or under classifier-free guidance,
does not return the clip.  The note's fix keeps the inversion's trajectory and, while
reconstructing, lets every self-attention also read the keys and values of the reference
latent at the same noise level.  With `reference=True` the batch is [rows; references]:
row i's queries attend to [its text, its video, the reference's text, the reference's
video], each video block rotated by the same RoPE table (the same place in the clip has the
same position in both), and the references attend to themselves alone, so they compute the
keys and values the inversion saw.  A row that is its own reference gets the output it gets
alone: every score appears twice, and the softmax weights halve (tested).

The protocol is DiT's: `model(x, t, y=None, context=..., context_mask=..., frames=None)`;
t: (B,) float32 in the process's time units times `time_scale`; y: class labels with the
null label `num_classes` (num_classes set), added to c; learned_sigma doubles the output
channels.  The blocks are the top-level ModuleList `blocks` (FSDP2 units, recomputation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import (Attention, ContextEmbedding, PatchEmbed, check_context, check_word_fields,
                  sincos_position_embedding, timestep_embedding, unpatchify)
from ..nn.attention import attend, init_linears_, key_padding, merge_heads
from ..nn.context import context_plan
from ..nn.parallel import attention_plan, check_split, mlp_plan, no_sequence_parallel
from ..nn.patches import sincos_1d
from ..nn.rope import ROPE_SCALINGS, Rotary, apply_rotary, axis_split, rope_3d, video_positions
from .config import check_fields
from .dit import modulate

# where the video tokens' positions come from (see the module docstring)
POSITIONS = ("rope3d", "learned")


@dataclass(frozen=True)
class CogVideoXConfig:
    """in_channels: latent channels C.  out_channels: of the prediction (default C);
        learned_sigma doubles them (the UNet / DiT protocol).
    sample_frames, sample_size: the latent clip the network is built for, T frames of
        sample_size x sample_size; RoPE reads other sizes too (the learned table up to these).
    patch_size: p, in space only.  hidden_size: D.  depth: blocks.  num_heads: heads (D /
        num_heads must be a multiple of 16 under RoPE).  mlp_ratio: MLP width / D.
    time_embed_dim: E, the width of c (default D; CogVideoX: 512).
    num_classes: None, or class labels added to c.  time_scale: as in `UNetConfig`.
    qk_norm: LayerNorm on each head's q and k (CogVideoX: on).  norm_eps: every LayerNorm's
        eps but qk-norm's (1e-6).
    experts: separate adaLN modulations for text and video tokens (False: one shared).
    positions: one of `POSITIONS`.  rope_scaling: one of `hirune.nn.rope.ROPE_SCALINGS`.
    rope_base: the (T, H, W) grid in tokens that "interpolate" maps onto (default the built
        size: (sample_frames, sample_size / p, sample_size / p)).  rope_theta: RoPE's base.
    context_dim, context_vocab, context_len, word_vocab, word_dim, word_len: the text, as in
        `UViTConfig` (a frozen encoder's float tokens or token ids embedded by the network):
        the caption's tokens join the sequence, any number of them (no text positions).
    """

    in_channels: int = 4
    out_channels: int | None = None
    learned_sigma: bool = False
    sample_frames: int = 3
    sample_size: int = 8
    patch_size: int = 2
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    time_embed_dim: int | None = None
    num_classes: int | None = None
    time_scale: float = 1.0
    qk_norm: bool = True
    norm_eps: float = 1e-5
    experts: bool = True
    positions: str = "rope3d"
    rope_scaling: str = "extrapolate"
    rope_base: tuple[int, ...] | None = None
    rope_theta: float = 10_000.0
    context_dim: int | None = None
    context_vocab: int | None = None
    context_len: int = 32
    word_vocab: int | None = None
    word_dim: int = 128
    word_len: int = 16

    def __post_init__(self):
        check_fields(self)
        for name in ("in_channels", "out_channels", "sample_frames", "sample_size", "patch_size", "hidden_size",
                     "depth", "num_heads", "time_embed_dim", "num_classes", "context_dim", "context_vocab",
                     "context_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"CogVideoXConfig.{name}={value} is not valid; valid: a positive int")
        check_word_fields(self)
        if self.sample_size % self.patch_size:
            valid = [p for p in range(1, self.sample_size + 1) if self.sample_size % p == 0]
            raise ValueError(f"CogVideoXConfig.patch_size={self.patch_size} is not valid for sample_size="
                             f"{self.sample_size}; valid: {valid}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"CogVideoXConfig.num_heads={self.num_heads} is not valid for hidden_size="
                             f"{self.hidden_size}; valid: a divisor of it")
        if self.positions not in POSITIONS:
            raise ValueError(f"CogVideoXConfig.positions={self.positions!r} is not valid; valid: {list(POSITIONS)}")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise ValueError(f"CogVideoXConfig.rope_scaling={self.rope_scaling!r} is not valid; valid: "
                             f"{list(ROPE_SCALINGS)}")
        if self.positions == "rope3d" and self.head_dim % 16:
            raise ValueError(f"CogVideoXConfig.num_heads={self.num_heads} is not valid for hidden_size="
                             f"{self.hidden_size} with 3-D RoPE: head_dim={self.head_dim}; valid: hidden_size / "
                             "num_heads a multiple of 16 (t : y : x = 2/8 : 3/8 : 3/8 of each head, in pairs)")
        if self.positions == "learned" and self.hidden_size % 16:
            raise ValueError(f"CogVideoXConfig.hidden_size={self.hidden_size} is not valid with positions='learned'; "
                             "valid: a multiple of 16 (its 3-D sin-cos start)")
        if self.rope_base is not None and (len(self.rope_base) != 3 or min(self.rope_base) < 1):
            raise ValueError(f"CogVideoXConfig.rope_base={self.rope_base} is not valid; valid: None or (T, H, W), "
                             "three positive ints (tokens)")
        for name in ("mlp_ratio", "norm_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CogVideoXConfig.{name}={getattr(self, name)} is not valid; valid: a number > 0")
        if self.rope_theta <= 1:
            raise ValueError(f"CogVideoXConfig.rope_theta={self.rope_theta} is not valid; valid: a number > 1")

    @property
    def output_channels(self) -> int:
        out = self.out_channels or self.in_channels
        return 2 * out if self.learned_sigma else out

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def cond_dim(self) -> int:
        return self.time_embed_dim or self.hidden_size

    @property
    def grid(self) -> tuple[int, int, int]:
        """The built (T, H, W) in tokens: the learned table's size, RoPE's default base."""
        side = self.sample_size // self.patch_size
        return self.sample_frames, side, side


# Named sizes.  "tiny" (the default) and "small" are hirune's, for the digits on a CPU and a
# GPU; "2b" and "5b" are CogVideoX-2B's and -5B's widths (diffusers' configs: heads x 64,
# time_embed_dim 512).  Trainable parameters, counted in tests/models/test_cogvideox.py:
# tiny 1,706,256 and small 43,339,024 for 4-channel latents with MiniLM's 384-wide tokens
# (1,260,688 and 32,546,704 without text: one modulation, no text projection); 2b
# 1,693,783,872 and 5b 5,570,283,072 for 16 channels and T5's 4096, equal to diffusers'
# CogVideoXTransformer3DModel with RoPE at the same config (CogVideoX-2B itself uses fixed
# sin-cos positions instead, which hold no parameters).
COGVIDEOX_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=128, depth=4, num_heads=4),
    "small": dict(hidden_size=384, depth=12, num_heads=6),
    "2b": dict(hidden_size=1920, depth=30, num_heads=30, time_embed_dim=512),
    "5b": dict(hidden_size=3072, depth=42, num_heads=48, time_embed_dim=512),
}


def real_frames(frames: Tensor, total: int) -> Tensor:
    """(B, total) bool: True on each example's first frames[b] frames (frame packing), False
    on the padding after them."""
    return torch.arange(total, device=frames.device)[None] < frames[:, None]


def sincos_3d(dim: int, frames: int, rows: int, cols: int) -> Tensor:
    """The 3-D sin-cos table of CogVideoX's fixed positions: (frames, rows, cols, dim), the
    frame's `sincos_1d` on the first dim/4 channels, `sincos_position_embedding` of (i, j)
    on the other 3 dim/4 (dim divisible by 16)."""
    t = sincos_1d(dim // 4, torch.arange(frames)).float()                       # (frames, dim/4)
    space = sincos_position_embedding(dim - dim // 4, rows, cols)                # (rows cols, 3 dim/4)
    return torch.cat([t[:, None].expand(-1, rows * cols, -1), space[None].expand(frames, -1, -1)],
                     dim=-1).reshape(frames, rows, cols, dim)


class ExpertAdaLN(nn.Module):
    """LayerNorm and the expert modulation (module docstring): video (B, N, D), text
    (B, M, D), c (B, E) -> (normed video, normed text, video gate, text gate), gates
    (B, 1, D).  One LayerNorm (with its affine) for both; `linear` gives (shift, scale,
    gate) for the video, then the text's (experts), or one triple for both."""

    def __init__(self, dim: int, cond_dim: int, experts: bool, eps: float):
        super().__init__()
        self.experts = experts
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.linear = nn.Linear(cond_dim, (6 if experts else 3) * dim)

    def forward(self, video: Tensor, text: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mods = self.linear(F.silu(c)).chunk(6 if self.experts else 3, dim=1)
        shift, scale, gate = mods[:3]
        text_shift, text_scale, text_gate = mods[3:] if self.experts else mods
        return (modulate(self.norm(video), shift, scale), modulate(self.norm(text), text_shift, text_scale),
                gate[:, None], text_gate[:, None])


def joint_attention(attn: Attention, x: Tensor, text_len: int, rope: Rotary | None, mask: Tensor | None,
                    reference: bool = False) -> Tensor:
    """`attn` over the sequence x = [text, video] (B, M + N, D), the video part of q and k
    rotated by `rope` (cos, sin each (N, d/2) or (B, N, d/2)) after qk-norm; mask: (B, M + N)
    bool key padding mask or None.

    reference: the second half of the batch is a reference for the first (module docstring,
    "Reference attention"): row i < B/2 attends to its own keys and values and to those of
    row B/2 + i, [text, video | ref text, ref video]; the reference rows attend to themselves
    only.  Each block of video keys is rotated by the same table before they are joined."""
    q, k, v = attn.heads(x)                                                    # (B, heads, M + N, d)
    if rope is not None:
        if rope[0].dim() == 3:                                                 # per example: broadcast over heads
            rope = (rope[0][:, None], rope[1][:, None])
        q = torch.cat([q[:, :, :text_len], apply_rotary(q[:, :, text_len:], rope)], dim=2)
        k = torch.cat([k[:, :, :text_len], apply_rotary(k[:, :, text_len:], rope)], dim=2)
    keep = key_padding(mask, x)
    if not reference:
        return attn.proj(merge_heads(attend(q, k, v, keep, attn.recompute_scores)))
    (q, q_ref), (k, k_ref), (v, v_ref) = (t.chunk(2) for t in (q, k, v))
    keep, keep_ref = keep.chunk(2) if keep is not None else (None, None)
    joined = torch.cat([keep, keep_ref], dim=-1) if keep is not None else None
    out = F.scaled_dot_product_attention(q, torch.cat([k, k_ref], 2), torch.cat([v, v_ref], 2), attn_mask=joined)
    out_ref = F.scaled_dot_product_attention(q_ref, k_ref, v_ref, attn_mask=keep_ref)
    return attn.proj(merge_heads(torch.cat([out, out_ref])))


class ExpertBlock(nn.Module):
    """CogVideoX's expert transformer block (module docstring): video (B, N, D), text
    (B, M, D) -> the same, updated; one attention and one MLP over [text, video]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, cond_dim: int, experts: bool, qk_norm: bool,
                 eps: float):
        super().__init__()
        self.norm1 = ExpertAdaLN(dim, cond_dim, experts, eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.norm2 = ExpertAdaLN(dim, cond_dim, experts, eps)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(approximate="tanh"),
                                 nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, video: Tensor, text: Tensor, c: Tensor, rope: Rotary | None = None,
                mask: Tensor | None = None, reference: bool = False) -> tuple[Tensor, Tensor]:
        M = text.shape[1]
        v, s, gate, text_gate = self.norm1(video, text, c)
        out = joint_attention(self.attn, torch.cat([s, v], dim=1), M, rope, mask, reference)
        video, text = torch.addcmul(video, gate, out[:, M:]), torch.addcmul(text, text_gate, out[:, :M])
        v, s, gate, text_gate = self.norm2(video, text, c)
        out = self.mlp(torch.cat([s, v], dim=1))
        return torch.addcmul(video, gate, out[:, M:]), torch.addcmul(text, text_gate, out[:, :M])


class FinalLayer(nn.Module):
    """LayerNorm (`norm_final`), adaLN (shift, scale from SiLU(c); its own LayerNorm), then
    a linear to the patch features: video (B, N, D) -> (B, N, p p out)."""

    def __init__(self, dim: int, cond_dim: int, patch_features: int, eps: float):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=eps)
        self.modulation = nn.Linear(cond_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.linear = nn.Linear(dim, patch_features)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=1)
        return self.linear(modulate(self.norm(self.norm_final(x)), shift, scale))


class CogVideoX(nn.Module):
    """model(x, t, y=None, context=None, context_mask=None, frames=None) -> (B,
    config.output_channels, T, H, W) for latents x (B, C, T, H, W).  See the module docstring."""

    def __init__(self, config: CogVideoXConfig):
        super().__init__()
        self.config = c = config
        D, E, p = c.hidden_size, c.cond_dim, c.patch_size
        self.patch_embed = PatchEmbed(c.in_channels, D, p)
        self.time_embed = nn.Sequential(nn.Linear(D, E), nn.SiLU(), nn.Linear(E, E))
        # one row per class plus the null label (index num_classes) for classifier-free guidance
        self.class_embed = nn.Embedding(c.num_classes + 1, E) if c.num_classes else None
        self.context = ContextEmbedding(c.context_dim, None, c.context_vocab, c.context_len, c.word_vocab, c.word_dim,
                                        c.word_len) if c.context_dim else None
        self.text_proj = nn.Linear(c.context_dim, D) if c.context_dim else None
        self.pos_embed = nn.Parameter(torch.zeros(*c.grid, D)) if c.positions == "learned" else None
        experts = c.experts and c.context_dim is not None                    # without text: video tokens alone
        self.blocks = nn.ModuleList(ExpertBlock(D, c.num_heads, c.mlp_ratio, E, experts, c.qk_norm, c.norm_eps)
                                    for _ in range(c.depth))
        self.final_layer = FinalLayer(D, E, p * p * c.output_channels, c.norm_eps)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """adaLN-Zero (module docstring): the initial output is exactly 0."""
        init_linears_(self, nn.init.xavier_uniform_)
        self.patch_embed.init_like_linear()
        nn.init.normal_(self.time_embed[0].weight, std=0.02)
        nn.init.normal_(self.time_embed[2].weight, std=0.02)
        if self.class_embed is not None:
            nn.init.normal_(self.class_embed.weight, std=0.02)
        if self.pos_embed is not None:
            self.pos_embed.copy_(sincos_3d(self.config.hidden_size, *self.config.grid))
        zeroed = [m for block in self.blocks for m in (block.norm1.linear, block.norm2.linear)]
        for layer in zeroed + [self.final_layer.modulation, self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def embed(self, t: Tensor, y: Tensor | None) -> Tensor:
        """c = time MLP(sinusoids(t * time_scale), D of them) [+ class embedding(y)]: (B, E)."""
        freqs = timestep_embedding(t * self.config.time_scale, self.config.hidden_size)   # float32
        c = self.time_embed(freqs.to(self.time_embed[0].weight.dtype))
        if self.class_embed is not None:
            if y is None:
                y = torch.full_like(t, self.config.num_classes, dtype=torch.long)
            c = c + self.class_embed(y)
        elif y is not None:
            raise ValueError("class labels given to an unconditional CogVideoX (num_classes=None)")
        return c

    def check_input(self, x: Tensor, frames: Tensor | None) -> None:
        c = self.config
        if x.dim() != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"x of shape {tuple(x.shape)} is not valid; valid: (B, {c.in_channels}, T, H, W) latents")
        p, (T, H, W) = c.patch_size, x.shape[2:]
        for name, size in (("height", H), ("width", W)):
            if size % p:
                raise ValueError(f"x {name}={size} is not valid; valid: a multiple of patch_size={p} "
                                 f"(e.g. {max(p, size // p * p)} or {(size // p + 1) * p})")
        if self.pos_embed is not None:
            most = c.grid
            for name, size, limit in (("frames", T, most[0]), ("height", H // p, most[1]), ("width", W // p, most[2])):
                if size > limit:
                    raise ValueError(f"x {name}={size * (1 if name == 'frames' else p)} is not valid for the learned "
                                     f"position table; valid: at most {limit * (1 if name == 'frames' else p)} "
                                     f"(sample_frames={c.sample_frames}, sample_size={c.sample_size})")
        if frames is not None:
            if frames.shape != (x.shape[0],) or frames.dtype != torch.long:
                raise ValueError(f"frames of shape {tuple(frames.shape)} {frames.dtype} is not valid; valid: "
                                 f"({x.shape[0]},) int64, each example's number of real frames")
            if frames.min() < 1 or frames.max() > T:
                raise ValueError(f"frames={frames.tolist()} is not valid; valid: each in 1 .. {T} (x's frames)")

    def rope(self, T: int, rows: int, cols: int, frames: Tensor | None, device) -> Rotary | None:
        """The 3-D RoPE table of the video tokens ((N, d/2) each, or (B, N, d/2) when packed
        examples interpolate their own frames), or None (learned positions)."""
        c = self.config
        if c.positions != "rope3d":
            return None
        real = frames if c.rope_scaling == "interpolate" else None
        positions = video_positions(T, rows, cols, c.rope_scaling, c.rope_base or c.grid, real, device)
        return rope_3d(c.head_dim, *positions, theta=c.rope_theta)

    def key_mask(self, text_mask: Tensor | None, frames: Tensor | None, batch: int, text_len: int, T: int,
                 per_frame: int, device) -> Tensor | None:
        """(B, M + N) bool, True = a key every query may read: the real caption tokens and the
        tokens of each example's real frames; None when every token is real."""
        if text_mask is None and frames is None:
            return None
        if text_mask is None:
            text_mask = torch.ones(batch, text_len, dtype=torch.bool, device=device)
        video = torch.ones(batch, T * per_frame, dtype=torch.bool, device=device)
        if frames is not None:
            video = real_frames(frames.to(device), T).repeat_interleave(per_frame, 1)
        return torch.cat([text_mask.to(device), video], dim=1)

    def tensor_parallel_plan(self, tp: int, sp: bool = False) -> list[tuple[str, str]]:
        """Megatron's split of every expert block (`hirune.nn.parallel`): the joint attention by
        heads (3-D RoPE rotates each head alike), the MLP column then row, the expert adaLN's
        modulation weights sharded and its output gathered; the text encoder too."""
        c = self.config
        no_sequence_parallel(sp, "CogVideoX", "its blocks carry the text and the video tokens as two streams, "
                                             "which the sequence-parallel plan does not cut")
        check_split(tp, "CogVideoX", num_heads=c.num_heads, hidden_size=c.hidden_size,
                    mlp_width=int(c.hidden_size * c.mlp_ratio))
        plan = []
        for i in range(c.depth):
            plan += attention_plan(f"blocks.{i}.attn", c.qk_norm, sequence=False)
            plan += mlp_plan(f"blocks.{i}.mlp", sequence=False)
            plan += [(f"blocks.{i}.norm1.linear", "colwise_gather"), (f"blocks.{i}.norm2.linear", "colwise_gather")]
        return plan + context_plan(self.context, tp)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None, frames: Tensor | None = None, words: Tensor | None = None,
                words_mask: Tensor | None = None, reference: bool = False) -> Tensor:
        """context (B, M, context_dim) float or (B, M) token ids, context_mask (B, M) bool (True
        = a real token); frames (B,) int64: each example's real latent frames (frame packing);
        words (B, W) int64, words_mask (B, W) bool: the second encoder's (`word_vocab`);
        reference: the second half of the batch is the reference of the first (reference
        attention, module docstring)."""
        c = self.config
        self.check_input(x, frames)
        if reference and x.shape[0] % 2:
            raise ValueError(f"reference=True needs an even batch [rows; their references], got {x.shape[0]} rows")
        B, _, T, H, W = x.shape
        p = c.patch_size
        rows, cols = H // p, W // p
        check_context(self.context is not None, context, "CogVideoX")
        video = self.patch_embed(x.transpose(1, 2).flatten(0, 1))                   # (B T, rows cols, D)
        video = video.reshape(B, T * rows * cols, c.hidden_size)
        text, text_mask = video.new_zeros(B, 0, c.hidden_size), None                # no text: video tokens alone
        if self.context is not None:
            context, text_mask, _ = self.context(context, context_mask, words, words_mask)
            text = self.text_proj(context)                                           # (B, M, D)
        elif words is not None:
            raise ValueError("words given to a CogVideoX without text conditioning (context_dim=None)")
        emb = self.embed(t, y)
        if self.pos_embed is not None:
            video = video + self.pos_embed[:T, :rows, :cols].reshape(1, -1, c.hidden_size)
        rope = self.rope(T, rows, cols, frames, x.device)
        mask = self.key_mask(text_mask, frames, B, text.shape[1], T, rows * cols, x.device)
        for block in self.blocks:
            video, text = block(video, text, emb, rope, mask, reference)
        patches = self.final_layer(video, emb).reshape(B * T, rows * cols, -1)
        out = unpatchify(patches, p, H, W).unflatten(0, (B, T)).transpose(1, 2)     # (B, out, T, H, W)
        if frames is None:
            return out
        real = real_frames(frames.to(x.device), T)
        return out.masked_fill(~real[:, None, :, None, None], 0.0)                   # padding frames: 0
