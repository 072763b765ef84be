"""DALL-E's discrete VAE in the autoencoder family (`families/autoencoder.py`): the logged
temperature and KL weight follow their schedules step by step (a run whose temperature is
not annealed is caught), a resumed run is bitwise the uninterrupted one, two gloo
processes train what one does, the evaluation reports code usage and perplexity, and bad
settings are refused before anything is built."""

from __future__ import annotations

import json

import pytest
import torch

from hirune.checkpoint import latest_checkpoint
from hirune.objectives import dvae as dvae_objective
from hirune.objectives.dvae import kl_weight_at, temperature_at
from hirune.training import TrainConfig, train
from hirune.training.config import check_config
from hirune.training.presets import preset_config

TINY = {"size": "f2", "channels": 4, "num_res_blocks": 1, "mid_attention": False, "z_channels": 2,
        "codebook_size": 16, "kl_weight": 0.01, "kl_warmup": 2, "tau_anneal_steps": 3}


def dvae_config(out, **kw) -> TrainConfig:
    return TrainConfig.from_dict({"family": "autoencoder", "model": "dvae", "dataset": "digits",
                                  "model_config": TINY, "steps": 4, "batch_size": 8, "grad_accum": 2, "lr": 1e-3,
                                  "warmup": 2, "log_every": 1, "ckpt_every": 2, "sample_every": 0,
                                  "ema_decay": 0.99, "out": str(out), **kw})


def records(run_dir) -> list[dict]:
    lines = open(f"{run_dir}/metrics.jsonl").read().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def check_schedules(logged: list[dict]) -> None:
    """The record of step s holds the last optimizer step's (s - 1) tau and beta."""
    for r in logged:
        s = r["step"] - 1
        assert r["tau"] == pytest.approx(temperature_at(s, 1.0, 1 / 16, 3), rel=1e-12), r
        assert r["kl_weight"] == pytest.approx(kl_weight_at(s, 0.01, 2), rel=1e-12, abs=1e-15), r
        assert {"reconstruction", "kl", "usage", "perplexity"} <= r.keys()


def test_dvae_resumes_bitwise_and_logs_its_schedules(tmp_path):
    straight = train(dvae_config(tmp_path / "a"), progress=False)
    train(dvae_config(tmp_path / "b"), stop_after=2, progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "step_00000002"
    resumed = train(dvae_config(tmp_path / "b", resume=True), progress=False)
    assert records(tmp_path / "a") == records(tmp_path / "b") and len(records(tmp_path / "a")) == 4
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k in straight.ema.shadow:
        assert torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]), k
    check_schedules(records(tmp_path / "a"))
    assert [r["tau"] for r in records(tmp_path / "a")] == sorted((r["tau"] for r in records(tmp_path / "a")),
                                                                 reverse=True)
    # the evaluation of the run: PSNR and the hard codes' usage and perplexity on test digits
    report = resumed.family.evaluate(20)
    assert report["codebook_size"] == 16 and 1 <= report["codes_used"] <= 16
    assert 1 <= report["codebook_perplexity"] <= report["codes_used"] + 1e-9
    assert report["kl_to_uniform_nats_per_position"] >= 0 and report["latent_shape"] == [2, 4, 4]
    # a tokenizer, not a first stage of latent diffusion: refused by name
    from hirune.families.latent import FirstStage

    with pytest.raises(ValueError, match="a dvae run is an image tokenizer .* valid: a kl_autoencoder or vq_"):
        FirstStage(resumed.family)


def test_a_dalle_run_reads_a_dvae_run_as_its_image_tokenizer(tmp_path):
    """The token protocol end to end: the transformer trains on the dVAE's argmax codes (as
    the dVAE itself encodes them) and its samples decode through the dVAE's codebook."""
    pytest.importorskip("tokenizers")
    from hirune.training.loading import load

    tokenizer = tmp_path / "dvae"
    train(dvae_config(tokenizer, steps=2, ckpt_every=2), progress=False)
    out = tmp_path / "dalle"
    dalle = train(preset_config("dalle-digits", {"tokenizer": str(tokenizer), "steps": 2, "batch_size": 8,
                                                 "model_config": {"width": 16, "depth": 1, "heads": 2},
                                                 "sample_every": 0, "ckpt_every": 2, "log_every": 1,
                                                 "out": str(out)}), progress=False)
    dvae = load(tokenizer).model
    assert dalle.family.image_tokenizer.num_codes == 16 and dalle.family.grid == (4, 4)
    assert torch.equal(dalle.family.codes[:5, 0], dvae.encode_codes(dalle.family.train_data.data[:5]))
    samples, _ = load(out).generate(3, seed=0, top_k=4)
    assert samples.x.shape == (3, 1, 8, 8)


def test_a_temperature_that_is_not_annealed_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(dvae_objective, "temperature_at", lambda step, start, end, n: start)
    train(dvae_config(tmp_path / "run", steps=3, ckpt_every=0), progress=False)
    with pytest.raises(AssertionError):
        check_schedules(records(tmp_path / "run"))


def test_presets_match_the_vq_grid_and_codebook():
    for data, grid in (("digits", 4), ("mnist5k", 7)):
        dvae, vq = preset_config(f"dvae-{data}"), preset_config(f"vq-ae-{data}")
        assert check_config(dvae) is not None
        assert dvae.model_config["codebook_size"] == vq.model_config["codebook_size"] == 256
        shared = ("size", "channels", "channel_mult", "z_channels")
        assert {k: dvae.model_config.get(k) for k in shared} == {k: vq.model_config.get(k) for k in shared}
        assert (dvae.steps, dvae.batch_size) == (vq.steps, vq.batch_size)
        assert dvae.model_config["tau_anneal_steps"] == dvae.steps
        side = {"digits": 8, "mnist5k": 28}[data]
        factor = 2 ** (len(dvae.model_config.get("channel_mult", [1, 2])) - 1)
        assert side // factor == grid


@pytest.mark.parametrize("fields, match", [
    ({"tau_end": 2.0}, r"tau_end=2.0 is not valid; valid: a number in \(0, tau_start=1.0\]"),
    ({"kl_warmup": 1.5}, r"DVAEConfig.kl_warmup must be int"),
    ({"codebook_size": 1}, r"codebook_size=1 is not valid; valid: an integer >= 2"),
])
def test_bad_dvae_settings_are_refused_by_the_config_check(tmp_path, fields, match):
    cfg = dvae_config(tmp_path / "run", model_config={**TINY, **fields})
    with pytest.raises(ValueError, match=match):
        check_config(cfg)
    assert not (tmp_path / "run").exists()


# 48 channels: GroupNorm groups of 2 or more (see tests/distributed/test_distributed.py)
DDP_RUN = ["dvae-digits", "model_config={\"size\": \"f2\", \"channels\": 48, \"z_channels\": 4, \"codebook_size\": 32, "
           "\"kl_warmup\": 2, \"tau_anneal_steps\": 4}", "batch_size=16", "grad_accum=2", "steps=4", "log_every=1",
           "ckpt_every=4", "sample_every=0", "warmup=0", "lr_schedule=constant"]


@pytest.mark.slow  # the trainer's two-process parity: tests/distributed
def test_dvae_on_two_gloo_processes_equals_one(tmp_path):
    """2 processes x 2 micro-batches x 4 = 1 process x 2 x 8: every rank draws the Gumbel
    noise of the whole batch and keeps its rows, so the losses, the logged schedules and
    the weights agree (to 5e-5, float rounding of the gradient all-reduce)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hirune.checkpoint import load_checkpoint
    from hirune.training.presets import parse_preset_args

    one, two = tmp_path / "one", tmp_path / "two"
    train(preset_config(DDP_RUN[0], {**parse_preset_args(DDP_RUN)[1], "out": str(one)}), progress=False)
    worker = Path(__file__).resolve().parents[1] / "dist_worker.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(worker), "train", *DDP_RUN, f"out={two}"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = records(one), records(two)
    assert len(a) == len(b) == 4
    for x, y in zip(a, b):
        assert x["tau"] == y["tau"] and x["kl_weight"] == y["kl_weight"]
        assert abs(x["loss"] - y["loss"]) < 5e-5, (a, b)
    ta, tb = load_checkpoint(one)[0], load_checkpoint(two)[0]
    for part in ("model", "ema"):
        for k, v in ta[part].items():
            torch.testing.assert_close(tb[part][k], v, rtol=5e-5, atol=5e-5, msg=f"{part}.{k}")
