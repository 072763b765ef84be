"""Byte-pair encoding of captions (Sennrich et al. 2016), as DALL-E tokenizes its text,
trained on the training captions with Hugging Face's `tokenizers` library (`pip install
'hirune[bpe]'`).

Words are split on whitespace and punctuation and lower-cased; the trainer starts from
their characters and merges the most frequent adjacent pair until the vocabulary has
`vocab_size` entries (fewer when the captions run out of pairs).  Ids 0, 1, 2 are [PAD],
[BOS] and [UNK]; a character never seen in training becomes [UNK].  The tokenizer is
plain JSON (`to_json` / `from_json`), kept in the run's checkpoints, so a run reads its
text exactly as it was trained whatever the library's version does with ties.

`tokenizer(captions)` gives (ids, mask), both (B, max_len): [BOS], the caption's tokens,
then PAD; a caption longer than max_len is cut with a warning, like the word tokenizer's
(`models.text`).
"""

from __future__ import annotations

from torch import Tensor

from .text import BOS, PAD, UNK, padded_ids  # noqa: F401 -- PAD, UNK: the same ids as the word tokenizer's

SPECIAL = ("[PAD]", "[BOS]", "[UNK]")  # in this order, so that their ids are PAD, BOS, UNK


def _library():
    try:
        import tokenizers
    except ImportError:
        raise ImportError("text_tokenizer='bpe' needs the tokenizers library: pip install 'hirune[bpe]' "
                          "(or use text_tokenizer='word')") from None
    return tokenizers


class BPETokenizer:
    """A trained BPE tokenizer over captions; see the module docstring."""

    def __init__(self, tokenizer, max_len: int = 16):
        self.tokenizer, self.max_len = tokenizer, max_len
        self.vocab_size = tokenizer.get_vocab_size()
        self.cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, captions: list[str], vocab_size: int = 128, max_len: int = 16) -> BPETokenizer:
        tk = _library()
        tokenizer = tk.Tokenizer(tk.models.BPE(unk_token="[UNK]"))
        tokenizer.normalizer = tk.normalizers.Lowercase()
        tokenizer.pre_tokenizer = tk.pre_tokenizers.Whitespace()
        trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL), show_progress=False)
        tokenizer.train_from_iterator(captions, trainer)
        return cls(tokenizer, max_len)

    @classmethod
    def from_json(cls, text: str, max_len: int = 16) -> BPETokenizer:
        return cls(_library().Tokenizer.from_str(text), max_len)

    def to_json(self) -> str:
        return self.tokenizer.to_str()

    def tokens(self, text: str) -> list[int]:
        """[BOS] and the caption's token ids, uncut."""
        if text not in self.cache:
            self.cache[text] = [BOS] + self.tokenizer.encode(text).ids
        return self.cache[text]

    def __call__(self, captions: list[str]) -> tuple[Tensor, Tensor]:
        return padded_ids(captions, self.tokens, self.max_len)
