"""The two tokenizers of a dalle run: the image tokenizer (another trained run, frozen) and
the text tokenizer (BPE trained on the training captions, or the word tokenizer)."""

from __future__ import annotations

import torch
from torch import Tensor

PROTOCOL = ("num_codes", "encode_codes", "decode_codes")


class ImageTokenizer:
    """A trained tokenizer run, frozen: images <-> grids of code indices.  Any run whose
    network has `num_codes`, `encode_codes(x) -> (B, h, w)` and `decode_codes(codes) -> x`."""

    def __init__(self, run, device: torch.device | str = "cpu"):
        model = getattr(run, "model", None)
        missing = [name for name in PROTOCOL if not hasattr(model, name)]
        if missing:
            raise ValueError(f"the tokenizer run ({getattr(run, 'name', '?')} family, model {run.cfg.model!r}) has "
                             f"no image tokens ({', '.join(missing)} missing); use a VQ autoencoder run "
                             "(e.g. `hirune train vq-ae-mnist5k`) or a discrete VAE run")
        self.dataset = run.data.name
        self.model = model.to(device).eval().requires_grad_(False)
        self.num_codes = int(model.num_codes)

    def grid(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """(h, w) of the code grid of one image (C, H, W)."""
        with torch.no_grad():
            probe = torch.zeros(1, *image_shape, device=next(self.model.parameters()).device)
            return tuple(self.model.encode_codes(probe).shape[1:])

    @torch.no_grad()
    def encode(self, images: Tensor, batch: int = 256) -> Tensor:
        """images (N, C, H, W) in [-1, 1] -> codes (N, h, w) int64, on the CPU."""
        device = next(self.model.parameters()).device
        return torch.cat([self.model.encode_codes(chunk.to(device)).long().cpu() for chunk in images.split(batch)])

    @torch.no_grad()
    def decode(self, codes: Tensor, batch: int = 256) -> Tensor:
        """codes (N, h, w) -> images (N, C, H, W) clamped to [-1, 1]."""
        device = next(self.model.parameters()).device
        return torch.cat([self.model.decode_codes(chunk.to(device)).float().clamp(-1, 1)
                          for chunk in codes.split(batch)])


def text_tokenizer(config, saved: str | None = None, dataset: str = ""):
    """The run's text tokenizer: the word tokenizer (fixed by the code: over the image
    captions' words, or over the clips' for a dataset captioned as clips, whose motion words
    a video model started from this run will read); a BPE read back from its JSON `saved`,
    or None where it is still to be trained (`train_bpe`)."""
    if config.text_tokenizer == "word":
        from ..data.captions import training_vocabulary
        from ..data.video_captions import captioned_as_clips, video_training_vocabulary
        from ..models.text import WordTokenizer

        vocabulary = video_training_vocabulary() if captioned_as_clips(dataset) else training_vocabulary()
        return WordTokenizer(vocabulary, max_len=config.text_len)
    if saved is None:
        return None
    from ..models.bpe import BPETokenizer

    tokenizer = BPETokenizer.from_json(saved, max_len=config.text_len)
    if tokenizer.vocab_size > config.bpe_vocab:
        raise ValueError(f"the saved BPE tokenizer has {tokenizer.vocab_size} tokens, more than bpe_vocab="
                         f"{config.bpe_vocab}")
    return tokenizer


def text_vocab_size(config, tokenizer) -> int:
    """The rows of the network's text embedding: the word vocabulary, or bpe_vocab (the BPE
    trainer stops at most there; unused rows stay unused)."""
    return tokenizer.vocab_size if config.text_tokenizer == "word" else config.bpe_vocab


def train_bpe(captioner, config):
    """A BPE tokenizer trained on every training caption: each example in each training phrasing."""
    from ..data.captions import TRAIN_TEMPLATES
    from ..models.bpe import BPETokenizer

    n = len(captioner.labels)
    idx = torch.arange(n).repeat(len(TRAIN_TEMPLATES))
    template = torch.arange(len(TRAIN_TEMPLATES)).repeat_interleave(n)
    return BPETokenizer.train(captioner.captions(idx, template), config.bpe_vocab, config.text_len)


def check_text_ids(ids: Tensor, vocab_size: int) -> Tensor:
    """Token ids given directly (B, L): ValueError naming the valid range for any outside it."""
    ids = torch.as_tensor(ids)
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"text token ids must be integers, got {ids.dtype}")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if len(bad):
        raise ValueError(f"text token {int(bad[0])} is outside the vocabulary; valid: 0..{vocab_size - 1}")
    return ids.long()
