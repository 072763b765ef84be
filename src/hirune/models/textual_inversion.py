"""Textual inversion (Gal et al. 2022): one new word, the placeholder (default "<s*>"), added
to a frozen text encoder, whose embedding row alone is learned.

    tiny    the network's own word embedding (`nn.context.TextTransformer.token`) becomes a
            `PlaceholderEmbedding`: the frozen table (its key `token.weight` unchanged) and
            the placeholder row beside it, a separate Parameter (`token.placeholder`); the
            tokenizer gives the placeholder the id after the table's last
    minilm  the frozen all-MiniLM-L6-v2 reads input embeddings: its own word embedding for
            every token and the placeholder row (`PlaceholderRow`, a module of the network,
            so the optimizer, the EMA and the checkpoints see it) for the added token; the
            row's gradient flows through the frozen MiniLM to the context

The row is never a slice of the frozen table with a masked gradient: the table has
requires_grad False, so AdamW (and its weight decay) never steps it.  It starts as the
embedding of a one-token word (`initializer`); a word of several tokens, or a placeholder
the vocabulary already has, is refused.

`save_embedding` / `read_embedding`: the learned row as a safetensors file of a few
kilobytes, with the placeholder, the initializer and the encoder's identity as metadata.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..data.captions import words
from .text import BOS, UNK, MiniLM, WordTokenizer, padded_ids

DEFAULT_PLACEHOLDER = "<s*>"
EMBEDDING_FILE = "embedding.safetensors"
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class PlaceholderEmbedding(nn.Module):
    """A frozen embedding table (V, D) and the placeholder row (1, D) after it: id V.
    tokens (...) int64 -> (..., D); the table's rows come out bitwise as before."""

    def __init__(self, table: nn.Embedding, rows: Tensor):
        super().__init__()
        self.weight = table.weight
        self.weight.requires_grad_(False)
        self.placeholder = nn.Parameter(rows.detach().clone().reshape(1, table.weight.shape[1]))

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0] + self.placeholder.shape[0]

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, torch.cat([self.weight, self.placeholder.to(self.weight.dtype)]))


class PlaceholderRow(nn.Module):
    """The placeholder row (1, D) of a frozen encoder that lives outside the network."""

    def __init__(self, rows: Tensor):
        super().__init__()
        self.placeholder = nn.Parameter(rows.detach().clone().reshape(1, -1))


def split_placeholder(text: str, placeholder: str) -> list[str]:
    """The caption's parts around each occurrence of the placeholder (case-insensitive)."""
    low, key, parts, start = text.lower(), placeholder.lower(), [], 0
    while (at := low.find(key, start)) >= 0:
        parts.append(text[start:at])
        start = at + len(key)
    return parts + [text[start:]]


class PlaceholderTokenizer:
    """A `WordTokenizer` that also reads the placeholder (as one token, id `new_id`)."""

    def __init__(self, tokenizer: WordTokenizer, placeholder: str, new_id: int):
        self.inner, self.placeholder, self.new_id = tokenizer, placeholder, new_id
        self.vocab_size, self.max_len = tokenizer.vocab_size + 1, tokenizer.max_len

    def tokens(self, text: str) -> list[int]:
        out = [BOS]
        for k, part in enumerate(split_placeholder(text, self.placeholder)):
            if k:
                out.append(self.new_id)
            out.extend(self.inner.index.get(w, UNK) for w in words(part))
        return out

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        return padded_ids(captions, self.tokens, self.max_len)


class PlaceholderMiniLM:
    """The frozen MiniLM with one added token whose input embedding is `row.placeholder`.
    Captions without the placeholder come from the shared encoder (cached, no gradient);
    the distinct captions with it are encoded again at every call, with the gradient."""

    def __init__(self, shared: MiniLM, placeholder: str, row: PlaceholderRow):
        self.shared, self.placeholder, self.row, self.max_len = shared, placeholder, row, shared.max_len
        self.tokenizer = copy.deepcopy(shared.tokenizer)  # the shared one stays as it was
        self.tokenizer.add_tokens([placeholder])
        self.new_id = self.tokenizer.convert_tokens_to_ids(placeholder)

    def _encode(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        model = self.shared.model
        batch = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_len,
                               return_tensors="pt")
        ids = batch["input_ids"]
        table = model.get_input_embeddings()
        embeds = table(ids.clamp_max(table.num_embeddings - 1))                  # (B, M, D), no gradient
        new = (ids == self.new_id)[..., None]
        row = self.row.placeholder[0].to(embeds.device, embeds.dtype)
        embeds = torch.where(new, row.expand_as(embeds), embeds)                # the row's gradient path
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                    token_type_ids=batch.get("token_type_ids")).last_hidden_state.float()
        return out, batch["attention_mask"].bool()

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        key = self.placeholder.lower()
        mine = sorted({c for c in captions if key in c.lower()})
        if not mine:
            return self.shared(captions)
        out, mask = self._encode(mine)
        where = {c: i for i, c in enumerate(mine)}
        others = [c for c in captions if c not in where] or [""]
        plain, plain_mask = self.shared(others)
        plain_at = {c: i for i, c in enumerate(others)}
        rows = [out[where[c]] if c in where else plain[plain_at[c]].to(out.device) for c in captions]
        masks = [mask[where[c]] if c in where else plain_mask[plain_at[c]].to(mask.device) for c in captions]
        return torch.stack(rows), torch.stack(masks)


# --- the vocabulary: what the placeholder and the initializer may be ------------------------
def tiny_initializer(tokenizer: WordTokenizer, placeholder: str, initializer: str) -> int:
    """The id of a one-word initializer in the tiny vocabulary; the placeholder must be new."""
    _check_placeholder(placeholder)
    if placeholder.lower() in tokenizer.index:
        raise ValueError(f"placeholder={placeholder!r} is not valid: the tiny text encoder's vocabulary already has "
                         f"it; valid: a new token such as {DEFAULT_PLACEHOLDER!r}")
    tokens = words(initializer)
    if len(tokens) != 1:
        raise ValueError(f"initializer={initializer!r} is not valid: it is {len(tokens)} tokens {tokens}; valid: "
                         "one word of the vocabulary (e.g. 'seven', 'digit')")
    if tokens[0] not in tokenizer.index:
        raise ValueError(f"initializer={initializer!r} is not valid: the tiny vocabulary lacks it (it would be "
                         f"[UNK]); valid: one of {sorted(tokenizer.index)}")
    return tokenizer.index[tokens[0]]


def minilm_initializer(tokenizer, placeholder: str, initializer: str) -> int:
    """The id of a one-token initializer in MiniLM's WordPiece vocabulary; the placeholder new."""
    _check_placeholder(placeholder)
    vocab = tokenizer.get_vocab()
    if placeholder in vocab or placeholder.lower() in vocab:
        raise ValueError(f"placeholder={placeholder!r} is not valid: MiniLM's vocabulary already has it; valid: a "
                         f"new token such as {DEFAULT_PLACEHOLDER!r}")
    tokens = tokenizer.tokenize(initializer)
    if len(tokens) != 1:
        raise ValueError(f"initializer={initializer!r} is not valid: MiniLM reads it as {len(tokens)} tokens "
                         f"{tokens}; valid: a word that is one token (e.g. 'seven', 'digit')")
    return tokenizer.convert_tokens_to_ids(tokens[0])


def _check_placeholder(placeholder: str) -> None:
    if not placeholder or placeholder != placeholder.strip() or any(c.isspace() for c in placeholder):
        raise ValueError(f"placeholder={placeholder!r} is not valid; valid: one token without spaces, e.g. "
                         f"{DEFAULT_PLACEHOLDER!r}")


def vocabulary_fingerprint(tokenizer: WordTokenizer) -> str:
    """The tiny vocabulary's name: the first 16 hex digits of sha256 of its words in id order."""
    ordered = sorted(tokenizer.index, key=tokenizer.index.get)
    return hashlib.sha256(json.dumps(ordered).encode()).hexdigest()[:16]


# --- the embedding file --------------------------------------------------------------------
def save_embedding(path: str | Path, row: Tensor, info: dict) -> Path:
    """The learned row (1, D) float32 as `path` (safetensors), `info` as JSON in its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"embedding": row.detach().float().cpu().reshape(1, -1).contiguous()}, str(tmp),
              metadata={"hirune": json.dumps(info, sort_keys=True)})
    tmp.replace(path)
    return path


def read_embedding(path: str | Path) -> tuple[Tensor, dict]:
    """(row (1, D), info) of an embedding file, or of a run directory's embedding.safetensors."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / EMBEDDING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"embedding {path} does not exist; valid: a textual-inversion run's directory or "
                                f"its {EMBEDDING_FILE}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if "hirune" not in meta or "embedding" not in f.keys():
            raise ValueError(f"{path} is not valid as a learned embedding; valid: a file written by textual "
                             "inversion (tensor 'embedding', metadata 'hirune')")
        return f.get_tensor("embedding"), json.loads(meta["hirune"])


__all__ = ["DEFAULT_PLACEHOLDER", "EMBEDDING_FILE", "MINILM_NAME", "PlaceholderEmbedding", "PlaceholderMiniLM",
           "PlaceholderRow", "PlaceholderTokenizer", "minilm_initializer", "read_embedding", "save_embedding",
           "split_placeholder", "tiny_initializer", "vocabulary_fingerprint"]
