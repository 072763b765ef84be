"""Sampling image tokens one at a time from a causal transformer over [text | image], as
DALL-E does: temperature, top-k and top-p (nucleus) filtering, classifier-free guidance on
the logits, a key/value cache, and priming with the first rows of a real image's codes.

The model is anything with the protocol of `models.dalle.DalleTransformer`:

    model(text (B, L), image (B, n), cache=None) -> logits of the positions the cache does
        not hold yet (all L + n without one); the last predicts image code n
    model.image_logits(logits) -> the scores of the K image codes
    model.new_cache() -> an empty cache   (only where use_cache)

Classifier-free guidance (Ho & Salimans 2022; Gafni et al. 2022 for tokens) runs the
conditional and the null caption as one batch and combines their logits with the
convention of every sampler here: guided = uncond + s (cond - uncond), s = 1 the
conditional model, s = 0 the unconditional one (the w of "cond + w (cond - uncond)" is
s - 1).  Filtering and temperature act on the guided logits.
"""

from __future__ import annotations

import torch
from torch import Tensor


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties at the k-th value all kept), -inf the
    rest; k = 0 or k >= the vocabulary keeps everything."""
    if k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {k}")
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al. 2020): keep the smallest set of most probable
    tokens whose probability sums to at least p, -inf the rest; p = 1 keeps everything."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs          # the mass of the tokens ranked above each one
    drop_sorted = before >= p                  # a token is kept while the mass above it is < p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def guided_logits(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on logits: uncond + scale (cond - uncond)."""
    return uncond + scale * (cond - uncond)


def check_sampling_options(temperature: float, top_k: int, top_p: float, scale: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not scale == scale or scale in (float("inf"), float("-inf")):
        raise ValueError(f"the guidance scale must be a finite number, got {scale}")


def next_token(logits: Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None):
    """One draw per row from softmax(filtered logits / temperature)."""
    logits = top_p_filter(top_k_filter(logits.float() / temperature, top_k), top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def sample_image_tokens(model, text: Tensor, image_len: int, *, prime: Tensor | None = None,
                        temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, scale: float = 1.0,
                        null_text: Tensor | None = None, use_cache: bool = True,
                        generator: torch.Generator | None = None, callback=None) -> Tensor:
    """Image codes (B, image_len) for the captions' tokens `text` (B, L).

    prime: (B, K) codes of the first K positions (e.g. the top rows of a real image), kept
    as given; the rest are drawn.  scale != 1 guides with `null_text` (1, L), the null
    caption's tokens.  use_cache=False recomputes the whole prefix at every token (the
    reference the cache must equal).  callback(k) after each token drawn, k the codes so
    far (a progress bar)."""
    check_sampling_options(temperature, top_k, top_p, scale)
    B = len(text)
    codes = torch.zeros(B, 0, dtype=torch.long, device=text.device) if prime is None else prime.long()
    if codes.shape[0] != B or codes.shape[1] > image_len:
        raise ValueError(f"prime must be (B={B}, K <= {image_len}) codes, got {tuple(codes.shape)}")
    guided = scale != 1.0
    if guided:
        if null_text is None:
            raise ValueError("classifier-free guidance (scale != 1) needs the null caption's tokens")
        text = torch.cat([text, null_text.expand(B, -1).to(text.device)])
    cache = model.new_cache() if use_cache else None
    while codes.shape[1] < image_len:
        image = torch.cat([codes, codes]) if guided else codes
        logits = model.image_logits(model(text, image, cache=cache)[:, -1])
        if guided:
            logits = guided_logits(*logits.chunk(2), scale)
        codes = torch.cat([codes, next_token(logits, temperature, top_k, top_p, generator)[:, None]], 1)
        if callback is not None:
            callback(codes.shape[1])
    return codes
