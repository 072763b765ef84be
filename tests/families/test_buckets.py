"""Aspect-ratio buckets in training and sampling (families/buckets.py): every global batch one
bucket, the buckets drawn in proportion to their counts (a chi-square test that catches
buckets drawn uniformly), the rows uniform within the bucket, a draw that is a pure function
of the generator, a short bucketed run that saves, loads and samples at its buckets, and the
refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from hirune.data import DataFormat
from hirune.data.buckets import ASPECT_BUCKETS, recentre
from hirune.families import buckets
from hirune.families.diffusion import DiffusionDraw
from hirune.models.unet import UNET_SIZES, UNet, UNetConfig
from hirune.training.config import check_config
from hirune.training.loading import load
from hirune.training.loop import train
from hirune.training.presets import preset_config

TINY = {"channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [4],
        "head_channels": 8}


# --- the draw, on a stand-in run ---------------------------------------------------------
def _run(counts, seed: int = 0):
    """A stand-in run over sum(counts) examples of len(counts) buckets, shuffled, prepared."""
    bucket = torch.cat([torch.full((c,), b) for b, c in enumerate(counts)])
    bucket = bucket[torch.randperm(len(bucket), generator=torch.Generator().manual_seed(seed))]
    shapes = ASPECT_BUCKETS[: len(counts)]
    fmt = DataFormat("stand-in", "image", (1, 32, 32), 0, 256, shapes)
    data = SimpleNamespace(name="stand-in", data=torch.zeros(len(bucket), 1, 2, 2), labels=None, bucket=bucket,
                           buckets=shapes)
    run = SimpleNamespace(data=fmt, device=torch.device("cpu"), uses_labels=False)
    buckets.prepare(run, data)
    return run


def uniform_over_buckets(run, d, n, g):
    """A broken draw: the bucket uniform over the buckets, not in proportion to their counts."""
    b = int(torch.randint(len(run.bucket_members), (1,), generator=g))
    rows = torch.randint(run.bucket_counts[b], (n,), generator=g)
    d.bucket, d.bucket_example = torch.full((n,), b), run.bucket_members[b][rows]
    return d


def rows_each_their_own_bucket(run, d, n, g):
    """A broken draw: every row an example drawn from the whole data, whatever its bucket."""
    d.bucket_example = torch.randint(len(run.bucket_of), (n,), generator=g)
    d.bucket = run.bucket_of[d.bucket_example]
    return d


def _batches(run, draw, count: int, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [draw(run, DiffusionDraw(), n, g) for _ in range(count)]


def one_bucket_per_batch(run, draw) -> bool:
    """Every batch (and every rank's slice of it) holds one bucket, and its rows are that bucket's."""
    for d in _batches(run, draw, 50):
        for rows in (slice(0, 4), slice(4, 8)):
            part = d.slice(rows)
            if len(set(part.bucket.tolist())) != 1 or not (run.bucket_of[part.bucket_example] == part.bucket).all():
                return False
    return True


CHI2_DF2_999 = 13.816  # the 0.999 quantile of chi-square with 2 degrees of freedom


def bucket_chi2(run, draw, batches: int = 3000) -> float:
    """Pearson's chi-square of the buckets of `batches` draws against N_b / N."""
    seen = torch.bincount(torch.tensor([int(d.bucket[0]) for d in _batches(run, draw, batches, n=1)]),
                          minlength=len(run.bucket_counts)).double()
    expected = torch.tensor(run.bucket_counts, dtype=torch.float64) / sum(run.bucket_counts) * batches
    return float(((seen - expected) ** 2 / expected).sum())


def test_every_batch_is_one_bucket():
    run = _run([50, 30, 20])
    assert one_bucket_per_batch(run, buckets.draw)
    assert not one_bucket_per_batch(run, rows_each_their_own_bucket)


def test_buckets_are_drawn_in_proportion_to_their_counts():
    """3000 batches over buckets of 500 / 300 / 40 examples.  Under the right draw the statistic
    is chi-square with 2 degrees of freedom: above its 0.999 quantile (13.8) once in 1000 seeds
    (the seed here is fixed, so the test is deterministic; it gives 3.6).  Uniform buckets
    expect 3000 x sum((1/3 - p)^2 / p) = 5493 (the rare bucket alone: 3000 x 0.29^2 / 0.048;
    5458 here), 400 times the tolerance."""
    run = _run([500, 300, 40])
    assert bucket_chi2(run, buckets.draw) < CHI2_DF2_999
    assert bucket_chi2(run, uniform_over_buckets) > 100 * CHI2_DF2_999


def test_rows_are_uniform_within_the_bucket():
    """The 40 members of the rare bucket over 400 of its batches of 8 (3200 rows, 80 expected
    each): chi-square with 39 degrees of freedom, below its 0.999 quantile 72.1."""
    run = _run([500, 300, 40])
    g = torch.Generator().manual_seed(1)
    rows = []
    while len(rows) < 400:
        d = buckets.draw(run, DiffusionDraw(), 8, g)
        if int(d.bucket[0]) == 2:
            rows.append(d.bucket_example)
    members = run.bucket_members[2]
    seen = (torch.cat(rows)[:, None] == members).sum(0).double()
    assert seen.sum() == 3200 and float(((seen - 80) ** 2 / 80).sum()) < 72.1


def test_the_draw_is_a_pure_function_of_the_generator():
    run = _run([50, 30, 20])
    a, b = _batches(run, buckets.draw, 20), _batches(run, buckets.draw, 20)
    assert all(torch.equal(x.bucket, y.bucket) and torch.equal(x.bucket_example, y.bucket_example)
               for x, y in zip(a, b))
    c = _batches(run, buckets.draw, 20, seed=1)
    assert any(not torch.equal(x.bucket_example, y.bucket_example) for x, y in zip(a, c))


def test_every_bucket_runs_through_the_tiny_unet():
    net = UNet(UNetConfig(in_channels=1, **UNET_SIZES["tiny"])).eval()
    for size in ASPECT_BUCKETS:
        x = torch.randn(2, 1, *size)
        with torch.no_grad():
            assert net(x, torch.tensor([3.0, 500.0])).shape == x.shape


# --- a bucketed run ----------------------------------------------------------------------
def _cfg(out, **extra):
    values = {"steps": 2, "batch_size": 8, "sample_every": 2, "num_samples": 6, "ckpt_every": 2, "log_every": 1,
              "eval_samples": 0, "sample_steps": 3, "model_config": TINY, "out": str(out), **extra}
    return preset_config("aspect-mnist5k", values)


@pytest.fixture(scope="module")
def aspect_run(tmp_path_factory):
    """aspect-mnist5k (class-conditional) with a tiny UNet, trained two steps, saved and loaded."""
    out = tmp_path_factory.mktemp("aspect") / "run"
    train(_cfg(out), progress=False)
    return out, load(out)


def test_a_bucketed_run_trains_saves_loads_and_samples_at_its_buckets(aspect_run):
    out, run = aspect_run
    assert run.config.buckets and run.data.buckets == ASPECT_BUCKETS and run.sample_shape == (1, 32, 32)
    assert (out / "samples" / "step_00000002.png").is_file()
    default, _ = run.generate(3, steps=2, progress=False)
    assert default.x.shape == (3, 1, 28, 28)
    for size in ((32, 24), (24, 32)):
        x, labels = run.generate(4, steps=2, size=size, seed=5, progress=False)
        again, _ = run.generate(4, steps=2, size=list(size), seed=5, progress=False)
        assert x.x.shape == (4, 1, *size) and torch.isfinite(x.x).all() and torch.equal(x.x, again.x)
        assert labels.tolist() == [0, 1, 2, 3]


def test_the_loss_sees_the_bucket_of_the_draw_and_its_noise_cut_alike(tmp_path):
    from hirune.training.trainer import Trainer

    trainer = Trainer(_cfg(tmp_path / "run"), distributed=False)
    family, seen = trainer.family, []

    def forward(x, t, **cond):
        seen.append((x.shape, cond["y"]))
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        d = family.draw(8, g)
        size = buckets.batch_shape(family, d)
        batch, cut = buckets.batch(family, d)
        assert batch.x.shape == (8, 1, *size) and torch.equal(cut.noise, recentre(d.noise, size))
        assert torch.equal(batch.x, recentre(family.bucket_images[d.bucket_example], size))
        assert (family.bucket_of[d.bucket_example] == int(d.bucket[0])).all()
        family.loss(forward, None, d, 0)
        assert seen[-1][0] == (8, 1, *size)
        labels = family.bucket_labels[d.bucket_example]   # dropped to the null label 10 for CFG
        assert torch.equal(seen[-1][1], torch.where(d.drop, 10, labels))
    assert len({s[0] for s in seen}) > 1        # several buckets over six batches (p(one) < 0.25)
    # two trainers of one config draw the same batches (the data order is the seed's and step's)
    other = Trainer(_cfg(tmp_path / "run2"), distributed=False)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(3):
        a, b = family.draw(8, g1), other.family.draw(8, g2)
        assert torch.equal(a.bucket_example, b.bucket_example) and torch.equal(a.noise, b.noise)


# --- refusals ---------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    ({"dataset": "mnist5k"}, r"buckets=true is not valid for dataset 'mnist5k'.*valid: .*'mnist5k-aspect'"),
    ({"model": "dit", "model_config": {}}, r"model='dit' is not valid with buckets=true; valid: 'unet'"),
    ({"low_res": 16}, r"low_res=16 is not valid with buckets=true"),
    ({"autoencoder": "runs/kl-ae-mnist5k"}, r"autoencoder='runs/kl-ae-mnist5k' is not valid with buckets=true"),
])
def test_bad_settings_are_refused_by_name(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        check_config(_cfg(tmp_path / "run", **extra))


def test_shapes_that_are_not_buckets_are_refused(aspect_run):
    _, run = aspect_run
    with pytest.raises(ValueError, match=r"size=30x26 is not valid; valid: the run's buckets 28x28, 32x24, 24x32"):
        run.generate(2, steps=2, size=(30, 26), progress=False)
    with pytest.raises(ValueError, match=r"size=\(32,\) is not valid"):
        run.generate(2, steps=2, size=(32,), progress=False)


def test_a_run_without_buckets_takes_no_other_size(tmp_path):
    from hirune.families.base import get_family

    cfg = preset_config("vpred-digits", {"model_config": TINY, "out": str(tmp_path)})
    fmt = DataFormat("digits", "image", (1, 8, 8), 10, 17)
    run = get_family("diffusion")(cfg, cfg.section(), fmt, "cpu")
    assert buckets.sample_shape(run, None) == buckets.sample_shape(run, (8, 8)) == (1, 8, 8)
    with pytest.raises(ValueError, match=r"size=32x24 is not valid for a run without aspect-ratio buckets; "
                                         r"valid: None or 8x8"):
        run.generate(2, steps=2, size=(32, 24), progress=False)


def test_the_cli_samples_at_a_bucket_and_refuses_bad_sizes(aspect_run, tmp_path, capsys):
    from hirune.cli import main

    out, _ = aspect_run
    png = tmp_path / "tall.png"
    assert main(["sample", str(out), "--n", "4", "--steps", "2", "--size", "32x24", "--out", str(png)]) == 0
    assert png.is_file()
    with pytest.raises(SystemExit):
        main(["sample", str(out), "--size", "32by24"])
    assert "expected HxW" in capsys.readouterr().err
    assert main(["sample", str(out), "--n", "2", "--steps", "2", "--size", "20x20", "--out", str(png)]) == 2
    assert "size=20x20 is not valid; valid: the run's buckets 28x28, 32x24, 24x32" in capsys.readouterr().err


def test_batch_shape_is_the_target_size_for_micro_conditioning():
    run = _run([5, 5, 5])
    d = buckets.draw(run, DiffusionDraw(), 4, torch.Generator().manual_seed(0))
    assert buckets.batch_shape(run, d) == ASPECT_BUCKETS[int(d.bucket[0])]
    assert math.prod(buckets.batch_shape(run, d)) in (784, 768)
