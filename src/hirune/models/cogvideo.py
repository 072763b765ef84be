"""CogVideo's transformer (Hong et al. 2022, "CogVideo: Large-scale Pretraining for
Text-to-Video Generation via Transformers", sec. 3): the frames of a clip as tokens of an
image tokenizer, generated one after another by a causal transformer that starts from a
trained text-to-image model (CogView2 there, a `models.dalle` run here).

    sequence  [t_0 .. t_{L-1} | r | s_0 c_0^0 .. c_{N-1}^0 | s_1 c_0^1 .. c_{N-1}^1 | ...]
    text t (L tokens), the frame-rate token r (which gap between frames), and per frame f
    a start position s_f followed by its N = h w codes; position p predicts token p + 1,
    so s_f predicts frame f's first code and c_j^f its code j + 1.

Each frame restarts the image model's picture: s_f is the image model's last text position
(the same token and position embedding as t_{L-1}), and the frame's codes carry the image
model's own position table.  So in the image model's eyes each frame is [text | codes].

**Dual-channel attention** (sec. 3.2).  Every block keeps the image model's attention as the
*spatial* channel -- each frame's positions attend to the caption t_0..t_{L-2}, their start
s_f and their own earlier codes (causally), never to another frame or to r -- and adds a new
*temporal* channel (its own q, k, v, out) that attends causally over the whole sequence:
earlier frames, the frame-rate token, the text.  It reads the block's normalised input plus a
learned embedding of each frame's time in the clip (`times`).  The channels are mixed as

    h + spatial(LN h) + alpha * temporal(LN h + time),      alpha (width,) starting at 0

so at initialisation the video model computes, for every frame, exactly what the image
model computes on [text | that frame] (tested to 1e-10 in float64).  CogVideo mixes the two
with a learned sigmoid factor and a 3D local window for the temporal channel; ours is
global causal attention (the sequences are short, and the cache stays one list per layer).

Masks as groups: every position belongs to the text (-1), the frame-rate token (-2) or a
frame f >= 0 (its start and its codes); `sequence_layout` gives each position's group,
kind and embedding index, and `channel_masks` the two boolean masks from them.

Incremental decoding: as `models.dalle`, `model(..., cache=cache)` computes only the
positions the `KVCache` does not hold (the two channels' keys and values, per layer), so a
sampler pays one position per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.attention import split_heads
from .dalle import (Block, CausalSelfAttention, DalleConfig, DalleTransformer, KVCache, TokenModel,
                    build_token_model)

TEXT, RATE = -1, -2                      # the groups of the text and of the frame-rate token (frames: 0, 1, ...)
KIND_TEXT, KIND_RATE, KIND_START, KIND_CODE = 0, 1, 2, 3


@dataclass(frozen=True)
class CogVideoConfig(DalleConfig):
    """The image model's settings (`DalleConfig`) and the video's: frames, the most frame
    slots of a sequence (the time table's rows: times 0..frames-1); rates, the frame-rate
    tokens (one per gap the run knows)."""

    frames: int = 9
    rates: int = 3

    def __post_init__(self):
        super().__post_init__()
        for key in ("frames", "rates"):
            if getattr(self, key) < 1:
                raise ValueError(f"CogVideoConfig.{key} must be >= 1, got {getattr(self, key)}")


def sequence_length(text_len: int, image_len: int, n: int) -> int:
    """The positions of a sequence holding n codes: text, r, and a start per frame begun
    (frames 0..n // N: the last one the frame code n belongs to)."""
    return text_len + 2 + n + n // image_len


def predictor_positions(text_len: int, image_len: int, codes: Tensor) -> Tensor:
    """The position whose logits predict each code index i (flattened over frames):
    L + 1 + i + i // N (s_f for a frame's first code, c_{j-1} for code j)."""
    return text_len + 1 + codes + torch.div(codes, image_len, rounding_mode="floor")


def sequence_layout(text_len: int, image_len: int, n: int, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """(group, kind, index), each (T,) int64 for T = sequence_length(L, N, n) positions:
    group TEXT / RATE / frame f; kind KIND_TEXT / KIND_RATE / KIND_START / KIND_CODE; index
    the text position, 0 for r, the frame f of a start, the code's flat index i of a code."""
    L, N = text_len, image_len
    frames = n // N + 1
    text = torch.arange(L, device=device)
    per_frame = torch.arange(N + 1, device=device)                                 # 0: the start, 1..N: codes
    f = torch.arange(frames, device=device)[:, None].expand(-1, N + 1)
    code = f * N + per_frame - 1                                                   # (frames, N + 1)
    keep = ((per_frame == 0) | (code < n)).flatten()
    group = torch.cat([torch.full((L,), TEXT, device=device), torch.tensor([RATE], device=device),
                       f.flatten()[keep]])
    kind = torch.cat([torch.full((L,), KIND_TEXT, device=device), torch.tensor([KIND_RATE], device=device),
                      torch.where(per_frame == 0, KIND_START, KIND_CODE).expand(frames, -1).flatten()[keep]])
    index = torch.cat([text, torch.zeros(1, dtype=torch.long, device=device),
                       torch.where(per_frame == 0, f, code).flatten()[keep]])
    return group, kind, index


def channel_masks(group: Tensor, text_len: int, queries: int) -> tuple[Tensor, Tensor]:
    """(spatial, temporal) boolean masks (m, T) of the last m = `queries` positions over all
    T keys (True: attend).  Temporal: causal.  Spatial: causal and -- text to text; r to the
    text and itself; a frame's positions to the text t_0..t_{L-2} (its start stands for
    t_{L-1}) and to their own frame."""
    T = len(group)
    q = torch.arange(T - queries, T, device=group.device)[:, None]
    k = torch.arange(T, device=group.device)[None, :]
    causal = k <= q
    gq, gk = group[q], group[k]
    text_key = gk == TEXT
    spatial = torch.where(gq == TEXT, text_key,
                          torch.where(gq == RATE, text_key | (k == q), (text_key & (k < text_len - 1)) | (gk == gq)))
    return spatial & causal, causal


def attend(attn: CausalSelfAttention, h: Tensor, mask: Tensor, cache: KVCache | None, slot: int,
           dropout: float) -> Tensor:
    """One channel: attention with `attn`'s q, k, v, out under a boolean mask (m, T); the
    keys and values of earlier positions from the cache's `slot`."""
    B, m, width = h.shape
    q, k, v = (split_heads(proj(h), attn.heads) for proj in (attn.q, attn.k, attn.v))
    if cache is not None:
        k, v = cache.extend(slot, k, v)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return attn.out(y.transpose(1, 2).reshape(B, m, width))


class DualChannelBlock(Block):
    """The image model's block (norm1, attn: the spatial channel, norm2, mlp: its keys) and
    the temporal channel (`temporal`, its own q, k, v, out) mixed in at `gate` (alpha, 0)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__(width, heads, dropout)
        self.temporal = CausalSelfAttention(width, heads, dropout)
        self.gate = nn.Parameter(torch.zeros(width))

    def forward(self, h: Tensor, time: Tensor, masks: tuple[Tensor, Tensor], cache: KVCache | None,
                layer: int) -> Tensor:
        p = self.attn.dropout if self.training else 0.0
        x = self.norm1(h)
        spatial = attend(self.attn, x, masks[0], cache, 2 * layer, p)
        temporal = attend(self.temporal, x + time, masks[1], cache, 2 * layer + 1, p)
        h = h + spatial + self.gate * temporal
        return h + self.mlp(self.norm2(h))


class CogVideoTransformer(TokenModel):
    """model(text (B, L), rate (B,), codes (B, n), times (F,), cache=None) -> logits
    (B, T', V_joint) of the positions the cache does not hold yet (T' = all T without one);
    codes: the frames' codes so far, flattened frame after frame; rate: each row's
    frame-rate token 0..rates-1; times: each frame slot's time in the clip (F >= n // N + 1
    slots, the first ones used), 0..frames-1.  The logits predicting code i sit at
    `predictor_positions(L, N, i)`.  The parameter names of the image model are kept
    (text_embedding, image_embedding, text_positions, image_positions, blocks.k.{norm1, attn,
    norm2, mlp}, norm, head), so its state dict loads as is (`from_image_model`)."""

    def __init__(self, config: CogVideoConfig):
        super().__init__()
        build_token_model(self, config, DualChannelBlock)           # the image model's modules and names
        self.rate_embedding = nn.Embedding(config.rates, config.width)    # the frame-rate token r
        self.time_embedding = nn.Embedding(config.frames, config.width)   # the temporal channel's frame times
        for table in (self.rate_embedding.weight, self.time_embedding.weight):
            nn.init.normal_(table, std=0.02)

    @classmethod
    def from_image_model(cls, image: DalleTransformer, frames: int, rates: int) -> CogVideoTransformer:
        """A video model whose spatial channel, embeddings and head are `image`'s weights (copied)
        and whose new parts (temporal channels, gates at 0, rate and time tables) are drawn."""
        video = cls(CogVideoConfig(**vars(image.config), frames=frames, rates=rates))
        video.load_image_weights(image.state_dict())
        return video.to(next(image.parameters()).device)

    def load_image_weights(self, state: dict[str, Tensor]) -> None:
        """Copy an image model's state dict in; ValueError unless it fills exactly the image part."""
        own = self.state_dict()
        image = {k: v.shape for k, v in own.items() if k not in set(self.new_parameter_names())}
        given = {k: v.shape for k, v in state.items()}
        if given != image:
            raise ValueError(f"not the image model of this video model: keys or shapes differ at "
                             f"{sorted(set(given.items()) ^ set(image.items()))[:4]}")
        self.load_state_dict({**own, **state})

    def new_parameter_names(self) -> list[str]:
        """The parameters the image model does not have: temporal channels, gates, rate and time tables."""
        return [n for n, _ in self.named_parameters()
                if n.split(".")[0] in ("rate_embedding", "time_embedding") or ".temporal." in n or
                n.endswith(".gate")]

    def check_tokens(self, text: Tensor, rate: Tensor, codes: Tensor, times: Tensor) -> None:
        c = self.config
        if text.dim() != 2 or text.shape[1] != c.text_len:
            raise ValueError(f"text must be (B, text_len={c.text_len}) token ids, got {tuple(text.shape)}")
        if codes.dim() != 2 or len(codes) != len(text) or rate.shape != (len(text),):
            raise ValueError(f"codes must be (B={len(text)}, n) and rate (B,), got {tuple(codes.shape)}, "
                             f"{tuple(rate.shape)}")
        if times.dim() != 1 or len(times) < codes.shape[1] // c.image_len + 1:
            raise ValueError(f"times must give the {codes.shape[1] // c.image_len + 1} frame slots of "
                             f"{codes.shape[1]} codes, got {tuple(times.shape)}")
        for name, ids, size in (("text token", text, c.text_vocab), ("image code", codes, c.num_codes),
                                ("frame-rate token", rate, c.rates), ("frame time", times, c.frames)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= size):
                bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
                raise ValueError(f"{name} {bad} is outside its table; valid: 0..{size - 1}")

    def embed(self, text: Tensor, rate: Tensor, codes: Tensor, times: Tensor, kind: Tensor, index: Tensor,
              group: Tensor) -> tuple[Tensor, Tensor]:
        """The inputs of the positions (kind, index, group) (each (m,)): their embeddings (B, m,
        width) and the temporal channel's time embedding (1, m, width) (0 for text and r)."""
        c = self.config
        B, m = len(text), len(kind)
        h = torch.zeros(B, m, c.width, dtype=self.text_positions.dtype, device=text.device)
        where = {k: torch.nonzero(kind == k).flatten() for k in (KIND_TEXT, KIND_RATE, KIND_START, KIND_CODE)}
        t = index[where[KIND_TEXT]]
        h[:, where[KIND_TEXT]] = self.text_embedding(text[:, t]) + self.text_positions[t]
        h[:, where[KIND_RATE]] = self.rate_embedding(rate)[:, None]
        last = self.text_embedding(text[:, -1]) + self.text_positions[-1]       # s_f: t_{L-1} again
        h[:, where[KIND_START]] = last[:, None].expand(-1, len(where[KIND_START]), -1)
        i = index[where[KIND_CODE]]
        h[:, where[KIND_CODE]] = self.image_embedding(codes[:, i]) + self.image_positions[i % c.image_len]
        in_frame = group >= 0
        time = torch.where(in_frame[:, None], self.time_embedding(times[group.clamp_min(0)]), 0.0)
        return h, time[None].to(h.dtype)

    def forward(self, text: Tensor, rate: Tensor, codes: Tensor, times: Tensor,
                cache: KVCache | None = None) -> Tensor:
        c = self.config
        self.check_tokens(text, rate, codes, times)
        group, kind, index = sequence_layout(c.text_len, c.image_len, codes.shape[1], text.device)
        start = cache.length if cache is not None else 0
        masks = channel_masks(group, c.text_len, len(group) - start)
        h, time = self.embed(text, rate, codes, times, kind[start:], index[start:], group[start:])
        for layer, block in enumerate(self.blocks):
            h = block(h, time, masks, cache, layer)
        return self.head(self.norm(h))

    def bound(self, rate: int, times: Tensor) -> FramesAsImage:
        """This model with its frame-rate token and frame times fixed: the protocol of
        `sampling.autoregressive` (model(text, codes, cache) -> logits of the positions after
        the cache; the last predicts the next code)."""
        return FramesAsImage(self, rate, times)


class FramesAsImage:
    """A video model seen as an image model over one long image (every frame's codes in
    order): what `sampling.autoregressive.sample_image_tokens` draws from (also with
    classifier-free guidance, whose doubled batch gets the same rate)."""

    def __init__(self, model: CogVideoTransformer, rate: int, times: Tensor):
        self.model, self.rate, self.times = model, int(rate), torch.as_tensor(times).long()

    def __call__(self, text: Tensor, codes: Tensor, cache: KVCache | None = None) -> Tensor:
        rate = torch.full((len(text),), self.rate, dtype=torch.long, device=text.device)
        return self.model(text, rate, codes, self.times.to(text.device), cache=cache)

    def image_logits(self, logits: Tensor) -> Tensor:
        return self.model.image_logits(logits)

    def new_cache(self) -> KVCache:
        return self.model.new_cache()
