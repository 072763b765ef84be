"""DreamBooth (families/dreambooth.py) on a tiny text-to-image run of the 8 x 8 digits: the
class images are drawn once by the frozen base and reused; each batch is half instance rows
under the instance prompt and half class rows under the class prompt; the loss is the
prior-preservation loss of the objective's rows; full weights and LoRA; resume is exact; and
the refusals by name (no base, a base without text, an unknown subject, odd micro-batches,
DreamBooth settings without instance=)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hirune.checkpoint import latest_checkpoint
from hirune.data import load_dataset
from hirune.families import dreambooth
from hirune.training.config import check_config
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import finetune_config, preset_config
from hirune.training.trainer import Trainer

SMALL = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
         "head_channels": 16}
TINY = {"batch_size": 8, "sample_every": 0, "log_every": 1, "steps": 2, "ckpt_every": 2, "sample_steps": 3}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A small text-to-image UNet (tiny word encoder) on the 8 x 8 digits, trained 2 steps."""
    out = tmp_path_factory.mktemp("runs") / "base"
    train(preset_config("text-digits", {**TINY, "model_config": SMALL, "out": str(out)}), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> str:
    """Three 8 x 8 sevens with their middle row filled: an .npz of instance images."""
    data = load_dataset("digits", "train")
    sevens = data.data[data.labels == 7][:3].clone()
    sevens[:, 0, 4] = 1.0
    path = tmp_path_factory.mktemp("subject") / "sevens.npz"
    np.savez(path, images=sevens.numpy())
    return str(path)


def _config(base, subject, out, **overrides):
    return finetune_config("dreambooth", base, {**TINY, "instance": subject, "class_images": 6, "out": str(out),
                                                **overrides})


def test_the_class_images_are_drawn_once_by_the_base_and_reused(base, subject, tmp_path, monkeypatch):
    out = tmp_path / "db"
    train(_config(base, subject, out), progress=False)
    stored = load_file(str(out / dreambooth.CLASS_IMAGES))["images"]
    reference = load(base)
    expected, _ = reference.generate(6, steps=3, seed=0 + dreambooth.CLASS_SEED, prompts=["a seven"] * 6,
                                     progress=False)
    assert stored.shape == (6, 1, 8, 8) and torch.allclose(stored, expected.x.clamp(-1, 1), atol=1e-5)

    def fail(*args, **kwargs):
        raise AssertionError("the class images were drawn again")

    monkeypatch.setattr(dreambooth, "generate_class_images", fail)
    resumed = train(_config(base, subject, out, steps=3, resume=True), progress=False)
    assert resumed.step == 3
    assert torch.equal(load_file(str(out / dreambooth.CLASS_IMAGES))["images"], stored)
    trainer = Trainer(_config(base, subject, out, steps=3, resume=True))     # the trainer's rows: [instances; class]
    data, _ = trainer.training_data()
    assert torch.equal(data[3:], stored) and len(data) == 3 + 6
    with pytest.raises(ValueError, match="holds class images drawn from"):   # other settings: refused, not mixed
        Trainer(_config(base, subject, out, class_prompt="a handwritten seven"))


def test_the_batch_halves_carry_the_right_images_and_prompts(base, subject, tmp_path):
    trainer = Trainer(_config(base, subject, tmp_path / "db", p_uncond=0.0, prior_weight=0.5))
    family = trainer.family
    seen = []
    encode = family.text

    def recording(captions, device):
        seen.append(list(captions))
        return encode(captions, device)

    family.text = recording
    draw = family.draw(8, torch.Generator().manual_seed(3))
    assert draw.is_class.tolist() == [False, True] * 4
    assert all(i < 3 for i in draw.example[0::2].tolist()) and all(3 <= i < 9 for i in draw.example[1::2].tolist())
    batch = dreambooth.batch(family, draw)
    assert torch.equal(batch.x, family.examples[draw.example])
    out = family.loss(trainer.forward, batch, draw, 0)
    assert seen[-1] == ["a sks seven", "a seven"] * 4
    per_sample = out.per_sample
    expected = per_sample[0::2].mean() + 0.5 * per_sample[1::2].mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert per_sample.mean().item() != pytest.approx(expected.item(), rel=1e-3)   # a plain mean would fail
    assert set(family.logged_terms(out.terms)) == {"instance_loss", "prior_loss"}
    # caption dropout as the base had it (p_uncond 0.1): dropped rows are "", the others their prompt
    trainer = Trainer(_config(base, subject, tmp_path / "db2"))
    family, seen = trainer.family, []
    encode = family.text
    family.text = recording
    draw = family.draw(64, torch.Generator().manual_seed(0))
    family.loss(trainer.forward, dreambooth.batch(family, draw), draw, 0)
    captions = seen[-1]
    assert all(c == ("" if d else ("a seven" if k else "a sks seven"))
               for c, d, k in zip(captions, draw.drop.tolist(), draw.is_class.tolist()))
    assert 0 < draw.drop.sum() < 64


def test_resume_gives_the_same_tensors_and_lora_trains_only_its_adapter(base, subject, tmp_path):
    settings = {"steps": 4, "ckpt_every": 2}
    whole = train(_config(base, subject, tmp_path / "whole", **settings), progress=False)
    train(_config(base, subject, tmp_path / "parts", **settings), stop_after=2, progress=False)
    resumed = train(_config(base, subject, tmp_path / "parts", **settings, resume=True), progress=False)
    assert resumed.step == whole.step == 4
    for group in ("model", "ema", "optimizer"):
        a = load_file(str(latest_checkpoint(tmp_path / "whole") / f"{group}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "parts") / f"{group}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), group
    pytest.importorskip("peft")
    cfg = _config(base, subject, tmp_path / "lora", adapter="lora")
    assert cfg.lr == 1e-3                                          # LoRA's rate, not full fine-tuning's
    lora = train(cfg, progress=False)
    assert all(".lora_" in n for n, p in lora.model.named_parameters() if p.requires_grad)
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()


def test_refusals_by_name(base, subject, tmp_path):
    with pytest.raises(ValueError, match="without base"):
        check_config(preset_config("text-digits", {"instance": subject}))
    with pytest.raises(ValueError, match="needs a text-conditioned base"):
        check_config(preset_config("vpred-digits", {"instance": subject, "base": base}))
    with pytest.raises(ValueError, match="crossbar-sevens"):
        check_config(preset_config("text-digits", {"instance": "dotted-sevens", "base": base}))
    with pytest.raises(ValueError, match="even batch_size"):
        check_config(_config(base, subject, tmp_path / "x", batch_size=6, grad_accum=2))
    with pytest.raises(ValueError, match="without instance="):
        check_config(preset_config("text-digits", {"prior_weight": 0.5}))
    with pytest.raises(ValueError, match="two different"):
        check_config(_config(base, subject, tmp_path / "x", class_prompt="a sks seven"))
    with pytest.raises(ValueError, match="prior_weight"):
        check_config(_config(base, subject, tmp_path / "x", prior_weight=-1.0))
    with pytest.raises(ValueError, match=r"valid: images of the base's shape \(1, 8, 8\)"):
        Trainer(_config(base, "crossbar-sevens", tmp_path / "y"))
