"""The clip family (`families/clip.py`): zero-shot classification on a hand-built network
gives the labels it must; training draws a training phrasing per example and step; a run
resumes exactly, loads light and evaluates; bad input is refused naming what is valid."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hirune.data import data_format
from hirune.data.captions import NAMES, TRAIN_TEMPLATES, caption
from hirune.evaluation.contrastive import class_embeddings, recall_at_1, zero_shot_labels
from hirune.families.clip import Clip
from hirune.training import load, preset_config, train
from hirune.training.trainer import Trainer

SMALL = {"channels": 8, "embed_dim": 16, "text_dim": 32, "text_depth": 1}


def config(tmp_path, **kw):
    return preset_config("clip-digits", {"model_config": SMALL, "batch_size": 32, "steps": 4, "ckpt_every": 2,
                                         "log_every": 1, "warmup": 1, "out": str(tmp_path / "run"), **kw})


class HandBuilt(nn.Module):
    """Image k carries a bright pixel k (in raster order); a caption embeds as the
    one-hot of the digit its words name ("seven" or "7"), other words as nothing."""

    def __init__(self, index: dict[str, int], vocab_size: int):
        super().__init__()
        self.config = dataclasses.make_dataclass("C", [("embed_dim", int, 10)])()
        self.table = torch.zeros(vocab_size, 10)
        for k, name in enumerate(NAMES):
            self.table[index[name], k] = self.table[index[str(k)], k] = 1.0

    def encode_image(self, x):
        return F.normalize(x.flatten(1)[:, :10] + 1, dim=-1)

    def encode_text(self, ids, mask):
        return F.normalize((self.table[ids] * mask[..., None]).sum(1), dim=-1)


def planted(labels: torch.Tensor) -> torch.Tensor:
    x = -torch.ones(len(labels), 64)
    x[torch.arange(len(labels)), labels] = 1.0
    return x.reshape(-1, 1, 8, 8)


def test_zero_shot_on_a_hand_built_network_gives_the_expected_labels(tmp_path):
    run = Clip(config(tmp_path), config(tmp_path).section(), data_format("digits"), "cpu")
    run.model = HandBuilt(run.text.encode.index, run.text.vocab_size)
    labels = torch.tensor([7, 0, 3, 9, 1, 1, 4, 2, 8, 6, 5])
    images = planted(labels)
    assert torch.equal(run.zero_shot(images), labels)                       # "an image of a {name}"
    assert torch.equal(run.zero_shot(images, "the number {digit}"), labels)
    assert torch.equal(run.zero_shot(images, list(TRAIN_TEMPLATES)), labels)  # a prompt ensemble
    every = class_embeddings(run.embed_text, TRAIN_TEMPLATES, all_attributes=True)  # x 9 attribute variants
    assert torch.equal(zero_shot_labels(run.embed_image(images), every), labels)
    sim = run.similarity(images[:2], ["a handwritten seven", "a zero", "the digit 3"])
    assert sim.shape == (2, 3) and sim[0].argmax() == 0 and sim[1].argmax() == 1
    with pytest.raises(ValueError, match="prompt_template='an image of a digit' is not valid; valid: a string"):
        run.zero_shot(images, "an image of a digit")
    with pytest.raises(ValueError, match="valid fields"):
        run.zero_shot(images, "a {colour} {name}")
    with pytest.raises(ValueError, match=r"images of this run are \(N, 1, 8, 8\)"):
        run.embed_image(torch.zeros(2, 1, 28, 28))


def test_recall_counts_a_retrieval_of_the_same_caption_string():
    """Equal captions have equal embeddings: retrieving any of them is correct."""
    e = torch.eye(3)
    image, text = e[[0, 0, 1, 2]], e[[0, 0, 2, 1]]  # examples 0 and 1 share a caption; 2 and 3 are swapped
    r = recall_at_1(image, text, ["a one", "a one", "a two", "a three"])
    assert r == {"recall_image_to_text": 0.5, "recall_text_to_image": 0.5, "distinct_captions": 3}


def test_training_draws_a_training_phrasing_per_example_and_step(tmp_path):
    trainer = Trainer(config(tmp_path))
    captioner, seen = trainer.family.captioner, []
    write = captioner.captions

    def recording(idx, template, *args, **kw):
        out = write(idx, template, *args, **kw)
        seen.append((idx.tolist(), template.tolist(), out))
        return out

    captioner.captions = recording
    data, labels = trainer.training_data()
    trainer.train_step(data, labels)
    trainer.train_step(data, labels)
    assert len(seen) == 2
    for idx, templates, captions in seen:
        assert len(captions) == 32 and set(templates) == set(range(len(TRAIN_TEMPLATES)))
        for i, k, text in zip(idx, templates, captions):  # the example's own caption in the drawn phrasing
            assert text == caption(int(captioner.labels[i]), int(captioner.thickness[i]), int(captioner.slant[i]),
                                   TRAIN_TEMPLATES[k])
    assert seen[0][1] != seen[1][1]  # drawn anew each step


def test_a_clip_run_resumes_exactly_loads_and_evaluates(tmp_path):
    trainer = train(config(tmp_path), progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 4 and {"image_to_text", "text_to_image", "logit_scale", "batch_accuracy"} <= set(log[-1])
    other = config(tmp_path / "b")
    train(other, stop_after=2, progress=False)
    resumed = train(dataclasses.replace(other, resume=True), progress=False)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    run = load(tmp_path / "run")
    assert isinstance(run, Clip) and run.step == 4
    for name, shadow in trainer.ema.shadow.items():
        assert torch.equal(run.model.state_dict()[name], shadow)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    texts = ["a thick handwritten seven", "the digit 2"]
    torch.testing.assert_close(run.embed_image(images).norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(run.similarity(images, texts), run.embed_image(images) @ run.embed_text(texts).T)
    report = run.evaluate(30)
    assert report["examples"] == 30 and 0 <= report["zero_shot_held_out"] <= 1
    assert set(report["zero_shot_train_phrasings"]) == set(TRAIN_TEMPLATES)
    assert {"recall_image_to_text", "recall_text_to_image", "zero_shot_train", "zero_shot_train_all_attributes",
            "zero_shot_held_out_all_attributes"} <= set(report)
    with pytest.raises(ValueError, match="a clip run does not sample"):
        run.generate(4)
    with pytest.raises(ValueError, match="n=301: the digits test split has 300 examples"):
        run.evaluate(301)
    with pytest.raises(ValueError, match="a clip run has no density"):
        run.evaluate(nll=5)
    with pytest.raises(ValueError, match="a clip run does not sample"):
        run.evaluate(text_accuracy=5)


def test_bad_settings_are_refused_naming_what_is_valid(tmp_path):
    from hirune.training.config import check_config

    with pytest.raises(ValueError, match=r"text_encoder='bert' is not valid; valid: \['tiny', 'minilm'\]"):
        check_config(config(tmp_path, text_encoder="bert"))
    with pytest.raises(ValueError, match="dataset='two_moons' is not valid for a clip run; valid: labelled"):
        check_config(config(tmp_path, dataset="two_moons"))
    with pytest.raises(ValueError, match="CLIPConfig.channels=12 is not valid"):
        check_config(config(tmp_path, model_config={"channels": 12}))
    with pytest.raises(ValueError, match=r"family 'clip' trains model in \['clip'\], not 'unet'"):
        check_config(config(tmp_path, model="unet"))
    assert caption(3, template="an image of a {name}") == "an image of a three"


@pytest.mark.slow
def test_the_frozen_minilm_text_tower_trains(tmp_path):
    """text_encoder=minilm: 384-d token outputs, mean-pooled and projected; one step."""
    trainer = Trainer(config(tmp_path, text_encoder="minilm"))
    assert trainer.model.config.vocab_size == 0 and trainer.model.config.text_in_dim == 384
    loss, _ = trainer.train_step(*trainer.training_data())
    assert loss > 0
    emb = trainer.family.embed_text(["a handwritten seven", "the digit 7"])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
