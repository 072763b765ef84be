"""The light loader: a trained run for inference builds its network, process, denoiser,
text encoder and first stage from the checkpoint alone -- no optimizer, no dataset, no
encoding of training data -- for runs of every version and every family."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import hirune.data
import hirune.data.registry
from hirune.families import Family
from hirune.training.export import export_weights
from hirune.training.loading import load, run_directory

V0 = Path(__file__).resolve().parents[1] / "golden" / "v0" / "runs"
RUNS = sorted(p.name for p in V0.iterdir())


@pytest.fixture
def old_runs(tmp_path, monkeypatch):
    """The runs written before families, under runs/ in the working directory (the latent
    run names its autoencoder runs/kl-ae); reading any dataset raises."""
    shutil.copytree(V0, tmp_path / "runs")
    monkeypatch.chdir(tmp_path)

    def no_data(*args, **kwargs):
        raise AssertionError("the loader read a dataset")

    monkeypatch.setattr(hirune.data, "load_dataset", no_data)
    monkeypatch.setattr(hirune.data.registry, "load_dataset", no_data)
    return tmp_path / "runs"


@pytest.mark.parametrize("name", RUNS)
def test_every_family_loads_without_its_dataset_or_optimizer(old_runs, name):
    run = load(old_runs / name)
    assert isinstance(run, Family) and run.step == 3 and not run.model.training
    assert not hasattr(run, "optimizer") and run.train_data is None
    assert getattr(run, "latents", None) is None and getattr(run, "reflow_noise", None) is None
    params = dict(run.model.named_parameters())
    assert params and all(not p.is_cuda for p in params.values())
    if run.name == "diffusion":
        assert run.denoiser.model is run.model and run.process is not None
        assert (run.first_stage is not None) == (name == "ldm") and (run.text is not None) == (name == "text")


def test_the_loader_reads_the_ema_weights_or_the_raw_ones(old_runs):
    """(The old run's attention has one fused qkv: its rows are today's q, k, v.)"""
    from hirune.checkpoint import load_checkpoint
    from hirune.nn.attention import split_fused_projections

    tensors, _ = load_checkpoint(old_runs / "vpred")
    tensors = {group: split_fused_projections(tensors[group]) for group in ("model", "ema")}
    assert "middle.1.q.weight" in tensors["ema"]
    ema, raw = load(old_runs / "vpred"), load(old_runs / "vpred", use_ema=False)
    for k, v in tensors["ema"].items():
        assert torch.equal(ema.model.state_dict()[k], v) and torch.equal(raw.model.state_dict()[k],
                                                                          tensors["model"][k]), k
    assert any(not torch.equal(tensors["ema"][k], tensors["model"][k]) for k in tensors["ema"])


def test_an_export_and_a_checkpoint_folder_load_like_the_run(old_runs, tmp_path):
    exported = export_weights(old_runs / "dit", tmp_path / "dit.safetensors")
    folder = old_runs / "dit" / "checkpoints" / "step_00000003"
    assert run_directory(folder) == old_runs / "dit" and run_directory(old_runs / "dit") == old_runs / "dit"
    a, b, c = load(old_runs / "dit"), load(exported), load(folder)
    for k, v in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[k], v) and torch.equal(c.model.state_dict()[k], v), k
    assert a.generate(2, steps=2, progress=False)[0].x.equal(b.generate(2, steps=2, progress=False)[0].x)


def test_loading_leaves_the_callers_rng_alone_unless_told(old_runs):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    load(old_runs / "ddpm")
    assert torch.equal(torch.get_rng_state(), before)
    load(old_runs / "ddpm", isolate_rng=False)  # as training loads the runs it builds on
    assert not torch.equal(torch.get_rng_state(), before)


def test_loading_a_run_that_does_not_exist_names_it(tmp_path):
    from hirune.checkpoint import CheckpointError

    with pytest.raises(CheckpointError):
        load(tmp_path / "nothing")
