"""Conditioning end to end: condition dropout, the noise-aware classifier, guided sampling,
inversion and editing from the command line, on small digit runs."""

from __future__ import annotations

import json

import pytest
import torch

from hirune.cli import main
from hirune.families import Batch
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer

TINY = ["steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cond, cls, lin = root / "cond", root / "cls", root / "linear"
    assert main(["train", "vpred-digits", "class_conditional=true", *TINY, f"out={cond}"]) == 0
    assert main(["train", "classifier-digits", *TINY, f"out={cls}"]) == 0
    assert main(["train", "ddpm-digits", *TINY, f"out={lin}"]) == 0
    return {"cond": str(cond), "cls": str(cls), "linear": str(lin)}


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_condition_dropout_uses_the_null_label(tmp_path):
    trainer = Trainer(preset_config("vpred-digits", {"class_conditional": True, "p_uncond": 0.3,
                                                     "out": str(tmp_path)}))
    family = trainer.family
    seen = []

    def spy(x, t, y=None):  # what the network is given is all this checks: its output need not be computed
        seen.append(y.clone())
        return torch.zeros_like(x)

    y = torch.arange(4000) % 10
    x = family.train_data.data[:1].expand(4000, -1, -1, -1)
    family.loss(spy, Batch(x, y, torch.arange(4000)), family.draw(4000, trainer.noise_rng), trainer.step)
    null = seen[0] == 10
    assert abs(float(null.double().mean()) - 0.3) < 0.03
    assert torch.equal(seen[0][~null], y[~null])


def test_classifier_objective_learns_the_digits(tmp_path):
    cfg = preset_config("classifier-digits", {"steps": 150, "warmup": 10, "ckpt_every": 0, "out": str(tmp_path),
                                              "model_config": {"channels": 16, "channel_mult": [1, 2],
                                                               "attention_resolutions": []}})
    trainer = train(cfg, progress=False)
    from hirune.evaluation.classifier import classifier_accuracy

    acc = classifier_accuracy(trainer.model, trainer.family.process, trainer.family.data.name)
    assert acc["accuracy_t0"] > 0.8, acc          # clean digits: far above chance (10%)
    assert acc["accuracy_t0"] >= list(acc.values())[-1]    # noisier inputs: harder


def test_classifier_config_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"family 'classifier' trains model in \['classifier'\], not 'unet'"):
        Trainer(preset_config("classifier-digits", {"model": "unet", "out": str(tmp_path)}))
    # a classifier always reads the labels: it has no class_conditional setting to turn them off
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['class_conditional'\] for family 'classifier'"):
        Trainer(preset_config("classifier-digits", {"class_conditional": False, "out": str(tmp_path)}))
    with pytest.raises(ValueError, match="classifier needs labels; two_moons has none"):
        Trainer(preset_config("classifier-digits", {"dataset": "two_moons", "out": str(tmp_path)}))
    with pytest.raises(ValueError, match="p_uncond"):
        Trainer(preset_config("vpred-digits", {"p_uncond": 1.0, "out": str(tmp_path)}))


def test_guided_sampling_from_the_command_line(runs, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    assert main(["sample", runs["cond"], "--guidance", "cfg", "--scale", "3", "--class-grid", "--n", "20",
                 "--steps", "2", "--out", str(grid)]) == 0
    assert grid.stat().st_size > 0
    assert main(["sample", runs["cond"], "--guidance", "classifier", "--classifier", runs["cls"], "--scale", "2",
                 "--class", "7", "--n", "4", "--steps", "2", "--out", str(tmp_path / "c.png")]) == 0
    capsys.readouterr()
    assert main(["eval", runs["cond"], "--guidance", "cfg", "--scale", "2", "--n", "20", "--steps", "2"]) == 0
    metrics = _json(capsys)
    assert metrics["guidance"] == "cfg" and 0 <= metrics["class_accuracy"] <= 1
    assert main(["eval", runs["cls"]]) == 0
    assert "accuracy_t0" in _json(capsys)
    assert main(["sample", runs["cond"], "--guidance", "cfg", "--scale", "nan", "--out", str(grid)]) == 2
    assert "finite" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--guidance", "cfg", "--scale", "3"], "class- or text-conditional run"),                  # unconditional run
    (["--guidance", "classifier", "--scale", "2"], "needs a trained classifier"),
    (["--guidance", "classifier", "--classifier", "CLS", "--scale", "2"], "must match"),  # linear vs cosine
    (["--guidance", "classifier", "--classifier", "LIN", "--scale", "2"], "not a noise-aware classifier"),
])
def test_guidance_bad_input_exits_2(runs, args, message, tmp_path, capsys):
    args = [{"CLS": runs["cls"], "LIN": runs["linear"]}.get(a, a) for a in args]
    assert main(["sample", runs["linear"], *args, "--n", "2", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert message in capsys.readouterr().err


def test_cfg_needs_condition_dropout(tmp_path, capsys):
    out = tmp_path / "nodrop"
    assert main(["train", "vpred-digits", "class_conditional=true", "p_uncond=0", *TINY, f"out={out}"]) == 0
    assert main(["sample", str(out), "--guidance", "cfg", "--scale", "2", "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "p_uncond" in capsys.readouterr().err


def test_invert_reconstructs_and_edit_runs(runs, tmp_path, capsys):
    out = tmp_path / "inv.png"
    assert main(["invert", runs["cond"], "test:3", "--steps", "50", "--out", str(out)]) == 0
    result = _json(capsys)
    assert result["psnr_db"] > 40, result          # exact inversion: the image comes back
    assert out.exists() and out.with_suffix(".npz").exists()
    assert main(["invert", runs["cond"], "test:3", "--steps", "50", "--guidance", "cfg", "--scale", "2",
                 "--out", str(out)]) == 0
    assert _json(capsys)["psnr_db"] > 40
    assert main(["edit", runs["cond"], "test:3", "--to", "8", "--steps", "5", "--out", str(tmp_path / "e.png")]) == 0
    edit = _json(capsys)
    assert edit["to"] == 8 and 0 <= edit["evaluator_class"] < 10
    assert main(["edit", runs["cond"], "test:3", "--to", "12", "--out", str(tmp_path / "e.png")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["edit", runs["cond"], "test:3", "--to", "a thin eight", "--out", str(tmp_path / "e.png")]) == 2
    assert "give a class number" in capsys.readouterr().err
    assert main(["invert", runs["cond"], "test:99999", "--out", str(out)]) == 2
    assert main(["invert", runs["cond"], str(tmp_path / "missing.png"), "--class", "1", "--out", str(out)]) == 2


def test_invert_reads_an_image_file(runs, tmp_path, capsys):
    from PIL import Image

    path = tmp_path / "digit.png"
    Image.fromarray((torch.rand(20, 20) * 255).to(torch.uint8).numpy()).save(path)
    assert main(["invert", runs["linear"], str(path), "--steps", "50", "--out", str(tmp_path / "i.png")]) == 0
    assert _json(capsys)["psnr_db"] > 40
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["invert", runs["linear"], str(bad), "--out", str(tmp_path / "i.png")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_load_of_a_classifier_has_no_denoiser(runs):
    run = load(runs["cls"])
    assert run.name == "classifier" and getattr(run, "denoiser", None) is None
    assert run.process is not None and run.model.config.num_classes == 10
    with pytest.raises(ValueError, match="this run is a classifier"):
        run.generate(2)


def test_invert_and_edit_name_bad_classes_and_runs(runs, tmp_path, capsys):
    """`invert RUN test:0 --class 42` reached the embedding (IndexError); on an unconditional
    run --class was silently ignored; a toy run cannot be inverted."""
    out = str(tmp_path / "i.png")
    for argv, message in [
        (["invert", runs["cond"], "test:0", "--class", "42"], "class 42 is out of range; valid: 0..9"),
        (["invert", runs["cond"], "test:0", "--class", "-1"], "class -1 is out of range; valid: 0..9"),
        (["invert", runs["linear"], "test:0", "--class", "3"], "--class needs a class-conditional run"),
        (["edit", runs["cond"], "test:0", "--from", "42", "--to", "1"], "source class [42] is out of range"),
        (["edit", runs["cond"], "test:0", "--to", "-3"], "target class [-3] is out of range"),
    ]:
        assert main([*argv, "--steps", "2", "--out", out]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"hirune {argv[0]}: error: ") and message in err[0], err


def test_invert_of_a_toy_run_is_one_line(tmp_path, capsys):
    toy = tmp_path / "toy"
    assert main(["train", "ddpm-two-moons", "steps=2", "ckpt_every=2", "sample_every=0",
                 'model_config={"hidden":32,"depth":2}', f"out={toy}"]) == 0
    capsys.readouterr()
    assert main(["invert", str(toy), "test:0", "--out", str(tmp_path / "i.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hirune invert: error: inversion and editing need a diffusion, score or flow-matching run on "
                   "images; this is a diffusion run on toy data"]
