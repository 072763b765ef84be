"""TrainConfig: the shared settings and the family's section; flat keys routed to the
section; key=value parsing; the configs of earlier versions upgraded without losing a
setting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hirune.families import get_family
from hirune.training.config import RESUMABLE, TrainConfig, check_config, parse_overrides, upgrade
from hirune.training.presets import PRESETS, parse_preset_args, preset_config

V0 = Path(__file__).resolve().parents[1] / "golden" / "v0" / "runs"
# the keys a family never read, which the upgrade drops (flat configs held every key for every run)
NOT_READ = {"normalizing_flow": "all", "autoencoder": "all", "classifier": {"objective", "prediction", "weighting",
            "min_snr_gamma", "class_conditional", "p_uncond", "text_encoder", "autoencoder", "coupling",
            "reflow_from", "reflow_steps", "sampler", "sample_steps", "clip_x0"}}


def test_flat_family_keys_go_into_the_section():
    cfg = TrainConfig.from_dict({"dataset": "digits", "model": "unet", "prediction": "v", "process": "ddpm",
                                 "process_config": {"schedule": "cosine"}, "steps": 7})
    assert cfg.family == "diffusion" and cfg.steps == 7
    assert cfg.family_config == {"prediction": "v", "process": "ddpm", "process_config": {"schedule": "cosine"}}
    section = cfg.section()
    assert section.prediction == "v" and section.objective == "regression"  # the default filled in
    assert cfg.to_dict()["family_config"] == dataclasses.asdict(section)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['predicton'\].*prediction"):
        TrainConfig.from_dict({"predicton": "v"})
    with pytest.raises(ValueError, match="valid"):  # a diffusion key given to the autoencoder family
        TrainConfig.from_dict({"family": "autoencoder", "model": "kl_autoencoder", "prediction": "v"})
    with pytest.raises(ValueError, match="unknown family"):
        TrainConfig.from_dict({"family": "gan"})


def test_identity_leaves_out_what_a_resumption_may_change():
    a = TrainConfig.from_dict({"sampler": "heun", "steps": 10, "out": "x", "prediction": "v"})
    b = TrainConfig.from_dict({"sampler": "ddim", "steps": 20, "out": "y", "prediction": "v"})
    assert a.identity() == b.identity()
    assert a.identity() != TrainConfig.from_dict({"sampler": "heun", "prediction": "x0"}).identity()
    assert not set(RESUMABLE) & set(a.identity())
    assert "sampler" not in a.identity()["family_config"] and "prediction" in a.identity()["family_config"]


def test_check_config_names_the_bad_setting():
    with pytest.raises(ValueError, match="objective='elbo' is not valid"):
        check_config(TrainConfig.from_dict({"objective": "elbo"}))
    with pytest.raises(ValueError, match="sampler='banana' is not valid"):  # found before training, not after
        check_config(TrainConfig.from_dict({"sampler": "banana"}))
    with pytest.raises(ValueError, match="trains model in"):
        check_config(TrainConfig.from_dict({"family": "classifier", "model": "unet"}))
    with pytest.raises(ValueError, match="divisible"):
        check_config(TrainConfig.from_dict({"batch_size": 30, "grad_accum": 4}))


def test_key_value_parsing_types_the_family_keys():
    out = parse_overrides(["prediction=v", "min_snr_gamma=3", "class_conditional=true", "steps=5",
                           'process_config={"T": 10}'])
    assert out == {"prediction": "v", "min_snr_gamma": 3.0, "class_conditional": True, "steps": 5,
                   "process_config": {"T": 10}}
    with pytest.raises(ValueError, match="unknown config key 'sample_steps' for family 'normalizing_flow'"):
        parse_preset_args(["realnvp-digits", "sample_steps=3"])
    with pytest.raises(ValueError, match="expects int"):
        parse_overrides(["steps=many"])
    preset, over = parse_preset_args(["kl-ae-digits", "steps=3"])
    assert preset_config(preset, over).family == "autoencoder"


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        cfg = preset_config(name)
        assert check_config(cfg) is not None, name


@pytest.mark.parametrize("run", sorted(p.name for p in V0.iterdir()))
def test_upgrade_keeps_every_setting_of_a_flat_config(run):
    """Every key of a config written before families is kept: as a shared key with the same
    value, or in the family's section with the same value, or it is one the family never
    read.  Harness: an upgrade that forgets a key fails this."""
    old = json.loads((V0 / run / "config.json").read_text())
    check_upgrade(old, upgrade(old))


def check_upgrade(old: dict, new: dict) -> None:
    cfg = TrainConfig.from_dict(new)
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    section = dataclasses.asdict(cfg.section())
    dropped = NOT_READ.get(cfg.family, set())
    for key, value in old.items():
        if key in shared:
            assert getattr(cfg, key) == (value if key != "model" or value != "flow" else "normalizing_flow"), key
        elif dropped != "all" and key not in dropped:
            assert section[key] == value, key
    assert cfg.family == {"nll": "normalizing_flow", "classifier": "classifier",
                          "autoencoder": "autoencoder"}.get(old["objective"], "diffusion")


def test_the_upgrade_check_catches_a_lost_key():
    old = json.loads((V0 / "vpred" / "config.json").read_text())
    broken = upgrade(old)
    broken["family_config"].pop("prediction")
    with pytest.raises(AssertionError, match="prediction"):
        check_upgrade(old, broken)


def test_upgrade_leaves_todays_configs_alone():
    cfg = preset_config("vpred-digits").to_dict()
    assert upgrade(cfg) == cfg and get_family(cfg["family"]).name == "diffusion"


# --- every value checked before anything is built -------------------------------------------
TOY = {"dataset": "two_moons", "model": "mlp", "model_config": {"hidden": 32, "depth": 2}}


@pytest.mark.parametrize("key, value, valid", [
    ("grad_clip", -1.0, "> 0"), ("grad_clip", 0.0, "positive max norm"), ("grad_clip", float("nan"), "> 0"),
    ("lr", 0.0, "> 0"), ("lr", -1e-3, "> 0"), ("lr", float("inf"), "finite"), ("lr", float("nan"), "finite"),
    ("min_lr_ratio", -5.0, "[0, 1]"), ("min_lr_ratio", 1.5, "[0, 1]"), ("warmup", -1, ">= 0"),
    ("weight_decay", -0.1, ">= 0"), ("ema_decay", 1.0, "[0, 1)"), ("ema_decay", -0.5, "[0, 1)"),
    ("log_every", 0, ">= 1"), ("sample_every", -1, ">= 0"), ("ckpt_every", -1, ">= 0"),
    ("eval_samples", -1, ">= 0"), ("seed", -1, "an integer in [0, "), ("num_samples", 0, ">= 1"), ("grad_accum", 0, ">= 1"),
    ("steps", 2.5, "integer"), ("compile", "yes", "true or false"), ("dataset", 3, "string"),
    ("min_snr_gamma", 0.0, "> 0"), ("min_snr_gamma", -1.0, "> 0"), ("reflow_steps", 0, ">= 1"),
    ("sample_steps", 0, ">= 1"), ("p_uncond", 1.0, "[0, 1)"), ("clip_x0", 1, "true or false"),
])
def test_check_config_refuses_values_out_of_range(key, value, valid):
    """Each message names the key, the value and what is valid (grad_clip=-1 trained to a loss
    of 1769, min_lr_ratio=-5 to a negative learning rate, log_every=0 died after a step)."""
    with pytest.raises(ValueError) as e:
        check_config(TrainConfig.from_dict({**TOY, key: value}))
    message = str(e.value)
    assert f"{key}={value!r}" in message and valid in message, message


def test_check_config_refuses_unknown_processes_and_their_options():
    with pytest.raises(ValueError, match="process_config=.*bogus"):
        check_config(TrainConfig.from_dict({**TOY, "process_config": {"bogus": 1}}))
    with pytest.raises(ValueError, match="'eps' prediction cannot be used"):
        check_config(TrainConfig.from_dict({**TOY, "process": "rectified_flow", "prediction": "eps"}))
    with pytest.raises(ValueError, match="process_config=.*bogus"):
        check_config(TrainConfig.from_dict({"family": "classifier", "model": "classifier", "dataset": "digits",
                                            "process_config": {"bogus": 1}}))


@pytest.mark.parametrize("device", ["banana", "cuda:x", "cuda:-1", "gpu", ""])
def test_check_config_names_the_valid_devices(device):
    with pytest.raises(ValueError, match=r"device=.* is not valid; valid: auto, cpu, cuda, cuda:N"):
        check_config(TrainConfig.from_dict({**TOY, "device": device}))


def test_cuda_is_refused_where_no_gpu_is_visible(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"device='{device}'.*no GPU is visible.*device=cpu"):
            check_config(TrainConfig.from_dict({**TOY, "device": device}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_config(TrainConfig.from_dict({**TOY, "device": "cuda:1"}))
    with pytest.raises(ValueError, match="device='cuda:2'.*2 GPUs.*cuda:0 .. cuda:1"):
        check_config(TrainConfig.from_dict({**TOY, "device": "cuda:2"}))


def test_the_dataset_must_exist_before_anything_is_built(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder or .npz file: '/nope'"):
        check_config(TrainConfig.from_dict({**TOY, "dataset": "/nope"}))
    with pytest.raises(ValueError, match="unknown dataset 'moons'.*two_moons"):
        check_config(TrainConfig.from_dict({**TOY, "dataset": "moons"}))
    (tmp_path / "images").mkdir()
    check_config(TrainConfig.from_dict({**TOY, "dataset": str(tmp_path / "images")}))


@pytest.mark.parametrize("key", ["batch_size", "num_samples", "eval_samples"])
def test_sizes_beyond_the_machines_memory_are_refused(key):
    """batch_size=1000000000 was accepted until memory ran out: 10**12 examples of 8 x 8
    float32 values are 256 TB, more than any machine this runs on."""
    digits = {"dataset": "digits", "model": "unet"}
    with pytest.raises(ValueError, match=fr"{key}=1000000000000: .* 1 x 8 x 8 values are 256000 GB as float32, "
                                         r"more than this machine's memory"):
        check_config(TrainConfig.from_dict({**digits, key: 10**12}))


def test_evaluation_counts_are_checked_before_training():
    """A toy's sample quality compares n samples with n test points: eval_samples beyond the
    test split failed after training; and without checkpoints there is nothing to evaluate."""
    with pytest.raises(ValueError, match="eval_samples=10001: the two_moons test split has 10000 examples"):
        check_config(TrainConfig.from_dict({**TOY, "eval_samples": 10001}))
    with pytest.raises(ValueError, match="eval_samples=100 evaluates the last checkpoint, and ckpt_every=0"):
        check_config(TrainConfig.from_dict({**TOY, "eval_samples": 100, "ckpt_every": 0}))


def test_sizes_of_image_datasets_count_every_pixel(tmp_path, monkeypatch):
    import numpy as np

    from hirune.data import sizes

    monkeypatch.setattr(sizes, "physical_memory", lambda: 2**30)  # 1 GiB
    np.savez(tmp_path / "big.npz", images=np.zeros((2, 3, 64, 64), dtype=np.uint8))
    ok = {**TOY, "model": "unet", "model_config": {}, "batch_size": 2**15}  # 2**15 x 12288 x 4 B = 1.5 GiB
    with pytest.raises(ValueError, match="batch_size=32768: .* 3 x 64 x 64"):
        check_config(TrainConfig.from_dict({**ok, "dataset": str(tmp_path / "big.npz")}))
    check_config(TrainConfig.from_dict({**ok, "dataset": "digits"}))  # 8 x 8 pixels: 8 MiB

