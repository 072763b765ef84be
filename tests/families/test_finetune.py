"""Fine-tuning a trained diffusion run (families/finetune.py): full fine-tuning starts from
the base's weights exactly; a LoRA run starts at the base's output, trains only its adapter
(weight decay never touches the frozen base), checkpoints only the adapter's tensors with
the base's identity, writes peft's files, resumes exactly, loads light and samples; and the
refusals (settings, another base, a rank larger than a layer, an unknown target)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from optional import needs
from hirune.checkpoint import CheckpointError, latest_checkpoint
from hirune.training.loading import load, with_frozen
from hirune.training.loop import train
from hirune.training.presets import finetune_config, preset_config
from hirune.training.trainer import Trainer

pytestmark = needs("peft")

SMALL = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
         "head_channels": 16}
TINY = {"batch_size": 8, "sample_every": 0, "log_every": 1}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    """A small v-prediction UNet on the 8 x 8 digits, trained 2 steps."""
    out = tmp_path_factory.mktemp("runs") / "base"
    train(preset_config("vpred-digits", {**TINY, "steps": 2, "ckpt_every": 2, "model_config": SMALL,
                                         "out": str(out)}), progress=False)
    return str(out)


def _lora(base: str, out, **overrides):
    return finetune_config("lora", base, {**TINY, "steps": 2, "ckpt_every": 2, "out": str(out), **overrides})


def _output(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x, t = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([10.0, 300.0, 600.0, 990.0])
    with torch.no_grad():
        return model(x, t)


def _is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


# --- the start -----------------------------------------------------------------------------
def test_full_fine_tuning_starts_from_the_base_weights_exactly(base, tmp_path):
    cfg = finetune_config("finetune", base, {**TINY, "out": str(tmp_path / "ft"),
                                             "model_config": {"channels": 64}})   # the base's network wins
    trainer = Trainer(cfg)
    reference = load(base)
    assert trainer.model.config == reference.model.config
    mine, theirs = trainer.model.state_dict(), reference.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert all(p.requires_grad for p in trainer.model.parameters())
    assert trainer.family.frozen_names() == []
    assert cfg.lr == 1e-4 and cfg.family_config["adapter"] == "" and cfg.family_config["base"] == base


def test_a_lora_run_starts_at_the_base_output_and_trains_only_its_adapter(base, tmp_path):
    trainer = Trainer(_lora(base, tmp_path / "lora", weight_decay=0.5, lora_rank=2, lora_alpha=4.0))
    model, reference = trainer.model, load(base).model
    assert torch.equal(_output(model.eval()), _output(reference))       # B = 0: bitwise the base
    model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(_is_adapter(n) for n in trainable)
    assert set(trainer.ema.shadow) == trainable
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data, labels = trainer.training_data()
    for _ in range(3):
        trainer.train_step(data, labels)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())     # weight decay 0.5 touched none
    assert any(not torch.equal(params[n], v) for n, v in adapters.items() if ".lora_B." in n)
    assert set(trainer.optimizer.state) == {params[n] for n in trainable}


# --- checkpoints, files, resume, loading ----------------------------------------------------
def test_checkpoints_hold_only_the_adapter_and_the_base_identity(base, tmp_path):
    out = tmp_path / "lora"
    trainer = train(_lora(base, out), progress=False)
    ckpt = latest_checkpoint(out)
    adapter_names = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    for group in ("model", "ema"):
        assert set(load_file(str(ckpt / f"{group}.safetensors"))) == adapter_names
    optimizer = load_file(str(ckpt / "optimizer.safetensors"))
    assert len(optimizer) == 3 * len(adapter_names)                      # step, exp_avg, exp_avg_sq each
    state = json.loads((ckpt / "state.json").read_text())
    reference = load(base)
    assert state["base"]["path"] == base and state["base"]["step"] == reference.step == 2
    assert len(state["base"]["fingerprint"]) == 16
    assert not (out / "references").exists()                             # the base is named, not copied
    # peft's files, from the EMA: the adapter and what it adapts
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 4
    assert config["hirune"]["base"] == base and config["hirune"]["base_fingerprint"] == state["base"]["fingerprint"]
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert {k.removeprefix("base_model.model.") for k in tensors} == \
        {n.replace(".default.", ".") for n in adapter_names}
    ema = load_file(str(ckpt / "ema.safetensors"))
    assert all(torch.equal(tensors["base_model.model." + n.replace(".default.", ".")], ema[n]) for n in ema)
    small, whole = sum(p.stat().st_size for p in (out / "adapter").iterdir()), (ckpt / "model.safetensors").stat()
    assert small < 100_000 and whole.st_size < 100_000


def test_resume_gives_the_same_tensors_as_an_uninterrupted_run(base, tmp_path):
    settings = {"steps": 4, "ckpt_every": 2, "lora_dropout": 0.1}   # dropout: the RNG state resumes too
    whole = train(_lora(base, tmp_path / "whole", **settings), progress=False)
    train(_lora(base, tmp_path / "parts", **settings), stop_after=2, progress=False)
    resumed = train(_lora(base, tmp_path / "parts", **settings, resume=True), progress=False)
    assert resumed.step == whole.step == 4
    for group in ("model", "ema", "optimizer"):
        a = load_file(str(latest_checkpoint(tmp_path / "whole") / f"{group}.safetensors"))
        b = load_file(str(latest_checkpoint(tmp_path / "parts") / f"{group}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), group


def test_an_adapter_run_loads_light_and_samples(base, tmp_path):
    out = tmp_path / "lora"
    trainer = train(_lora(base, out, steps=3, ckpt_every=3), progress=False)
    run = load(out)
    assert run.step == 3 and set(run.frozen_names()) == {k for k in run.model.state_dict() if not _is_adapter(k)}
    # the base's weights, the trainer's EMA adapters
    with trainer.ema.applied(trainer.model):
        expected = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    got = run.model.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    out_x, _ = run.generate(4, steps=2)
    assert out_x.x.shape == (4, 1, 8, 8) and torch.isfinite(out_x.x).all()
    # `hirune export`: the adapter's tensors and the base's identity in one small file, which loads the same
    from hirune.training.export import export_weights

    exported = export_weights(out)
    assert exported.stat().st_size < 100_000
    again = load(exported).model.state_dict()
    assert all(torch.equal(again[k], got[k]) for k in got)


def test_the_frozen_keys_must_be_exactly_the_missing_ones(base, tmp_path):
    trainer = Trainer(_lora(base, tmp_path / "lora"))
    model, frozen = trainer.model, trainer.family.frozen_names()
    saved = {k: v for k, v in model.state_dict().items() if _is_adapter(k)}
    assert with_frozen(model, saved, frozen, "x").keys() == model.state_dict().keys()
    with pytest.raises(CheckpointError, match=r"but the \d+ its base run provides; it lacks \['.*lora_"):
        with_frozen(model, dict(list(saved.items())[1:]), frozen, "x")
    with pytest.raises(CheckpointError, match="it holds base tensors"):
        with_frozen(model, {**saved, frozen[0]: model.state_dict()[frozen[0]]}, frozen, "x")


# --- refusals --------------------------------------------------------------------------------
def test_an_adapter_on_a_changed_base_is_refused_naming_both(base, tmp_path):
    moved = tmp_path / "base"
    shutil.copytree(base, moved)
    out = tmp_path / "lora"
    train(_lora(str(moved), out), progress=False)
    # the base trains on: its latest checkpoint is another step, with other weights
    cfg = json.loads((moved / "config.json").read_text())
    train(preset_config("vpred-digits", {**TINY, "model_config": SMALL, "steps": 3, "ckpt_every": 1,
                                         "out": str(moved), "resume": True}), progress=False)
    assert cfg["steps"] == 2
    with pytest.raises(CheckpointError, match=r"trained on the base .*base at step 2 \(weights \w{16}\); the base "
                                              r"is now .*base at step 3 \(weights \w{16}\)"):
        load(out)
    with pytest.raises(CheckpointError, match="trained on the base"):
        train(_lora(str(moved), out, steps=4, resume=True), progress=False)
    shutil.rmtree(moved)  # gone: the adapter names it
    with pytest.raises(FileNotFoundError, match=r"base run .*base does not exist \(a relative path"):
        load(out)


@pytest.mark.parametrize("overrides,message", [
    ({"lora_rank": 33}, r"rank=33 is larger than the layer down\.2\.1\.q allows \(Linear, in 32, out 32"),
    ({"lora_targets": "to_q"}, r"'to_q' matches no Linear or Conv2d layer of this UNet.*down\.N\.N\.q"),
    ({"dataset": "mnist5k"}, r"dataset='mnist5k' \(examples \(1, 28, 28\).*the base's shape \(1, 8, 8\)"),
    ({"prediction": "eps"}, r"prediction='eps' is not valid for base=.*the base's prediction='v'"),
])
def test_refusals_once_the_base_is_read(base, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        Trainer(_lora(base, tmp_path / "lora", **overrides))


def test_refused_settings(base, tmp_path):
    cfg = preset_config("vpred-digits", {**TINY, "out": str(tmp_path / "x")})
    from hirune.training.config import check_config

    def refused(message, **changes):
        import dataclasses

        bad = dataclasses.replace(cfg, family_config={**cfg.family_config, **changes.pop("family", {})}, **changes)
        with pytest.raises(ValueError, match=message):
            check_config(bad)

    refused(r"adapter='lora' is not valid without base", family={"adapter": "lora"})
    refused(r"adapter='qlora' is not valid; valid: \['', 'lora'\]", family={"adapter": "qlora", "base": base})
    refused(r"lora_rank=8 is not valid with adapter=''", family={"lora_rank": 8, "base": base})
    refused(r"lora_rank=0 is not valid; valid: an integer >= 1", family={"adapter": "lora", "base": base,
                                                                         "lora_rank": 0})
    refused(r"strategy='zero3' is not valid with adapter='lora'", strategy="zero3",
            family={"adapter": "lora", "base": base})
    with pytest.raises(FileNotFoundError, match="base run .*nowhere does not exist"):
        Trainer(preset_config("vpred-digits", {**TINY, "out": str(tmp_path / "y"), "base": str(tmp_path / "nowhere"),
                                               "adapter": "lora"}))
