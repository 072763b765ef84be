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
