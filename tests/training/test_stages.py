"""A preset that builds on another run's default directory (`runs/<preset>`) trains that run first
when it is missing: `hirune train` of a latent preset on a fresh clone is one command."""

from __future__ import annotations

import pytest

from hirune.cli import main
from hirune.training import presets
from hirune.training.presets import preset_config
from hirune.training.stages import earlier_stages

_TINY_AE = {**presets.PRESETS["kl-ae-digits"], "steps": 2, "batch_size": 8, "sample_every": 0, "ckpt_every": 2}
_TINY_UNET = {"channels": 8, "channel_mult": [1], "num_res_blocks": 1, "attention_resolutions": []}
_TINY_LDM = {**presets.PRESETS["vpred-digits"], "autoencoder": "runs/t-ae", "model_config": _TINY_UNET, "steps": 2,
             "batch_size": 8, "sample_every": 0, "ckpt_every": 2, "eval_samples": 0}


@pytest.fixture
def tiny_presets(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs/ is relative to the working directory
    monkeypatch.setitem(presets.PRESETS, "t-ae", _TINY_AE)
    monkeypatch.setitem(presets.PRESETS, "t-ldm", _TINY_LDM)
    return tmp_path


def test_the_missing_autoencoder_is_trained_first_then_left_alone(tiny_presets, capsys):
    stages = earlier_stages(preset_config("t-ldm", {"threads": 1}))
    assert [name for name, _ in stages] == ["t-ae"]
    ae = stages[0][1]
    assert ae.out == "runs/t-ae" and ae.threads == 1 and ae.steps == 2  # the machine's settings carry over
    assert main(["train", "t-ldm"]) == 0
    out = capsys.readouterr().out
    assert "stage 1/2: training t-ae -> runs/t-ae" in out and "stage 2/2: training t-ldm" in out
    assert (tiny_presets / "runs/t-ae/checkpoints").is_dir() and (tiny_presets / "runs/t-ldm/checkpoints").is_dir()
    assert earlier_stages(preset_config("t-ldm")) == []  # it exists now: trained once
    assert main(["train", "t-ldm", "out=runs/t-ldm2"]) == 0
    assert "stage" not in capsys.readouterr().out


def test_an_interrupted_stage_resumes_and_only_a_finished_run_counts(tiny_presets, monkeypatch, capsys):
    from hirune.training.loop import train

    monkeypatch.setitem(presets.PRESETS, "t-ae", {**_TINY_AE, "steps": 4})
    (tiny_presets / "runs/t-ae").mkdir(parents=True)  # a folder alone (killed before config.json) is not a run
    assert [(name, cfg.resume) for name, cfg in earlier_stages(preset_config("t-ldm"))] == [("t-ae", True)]
    train(preset_config("t-ae", {"resume": True}), stop_after=2, progress=False)  # killed after step 2's checkpoint
    assert (tiny_presets / "runs/t-ae/checkpoints/step_00000002").is_dir()
    assert [(name, cfg.resume) for name, cfg in earlier_stages(preset_config("t-ldm"))] == [("t-ae", True)]
    assert main(["train", "t-ldm"]) == 0
    assert "stage 1/2: training t-ae" in capsys.readouterr().out
    assert (tiny_presets / "runs/t-ae/checkpoints/latest").read_text().strip() == "step_00000004"
    assert earlier_stages(preset_config("t-ldm")) == []


def test_a_path_the_user_chose_is_never_trained_for_them(tiny_presets, capsys):
    assert earlier_stages(preset_config("t-ldm", {"autoencoder": "elsewhere/t-ae"})) == []
    assert main(["train", "t-ldm", "autoencoder=elsewhere/t-ae"]) == 2
    err = capsys.readouterr().err
    assert "autoencoder run elsewhere/t-ae does not exist" in err and not (tiny_presets / "runs/t-ae").exists()


def test_stages_nest_each_once_earliest_first_and_a_cycle_is_refused(tiny_presets, monkeypatch):
    # a run on the latent run (read only as a config here): its autoencoder first, then the latent run
    monkeypatch.setitem(presets.PRESETS, "t-top", {**_TINY_LDM, "autoencoder": "runs/t-ldm", "clip": "runs/t-ae"})
    assert [name for name, _ in earlier_stages(preset_config("t-top"))] == ["t-ae", "t-ldm"]
    monkeypatch.setitem(presets.PRESETS, "t-loop", {**_TINY_LDM, "autoencoder": "runs/t-loop"})
    with pytest.raises(ValueError, match="cycle: t-loop -> t-loop"):
        earlier_stages(preset_config("t-loop", {"out": "runs/other"}))


def test_the_main_job_is_latent_and_trains_its_autoencoder_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = preset_config()  # `hirune train` with no preset
    assert cfg.out == "runs/ldm-mnist5k" and cfg.family_config["autoencoder"] == "runs/kl-ae-mnist5k"
    assert [(name, stage.out) for name, stage in earlier_stages(cfg)] == [("kl-ae-mnist5k", "runs/kl-ae-mnist5k")]
