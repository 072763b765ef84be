"""The family interface: a family defined here, outside the package (the worked example of
docs/ARCHITECTURE.md), trains, resumes, checkpoints and loads through the same loop,
trainer and loader as the built-in ones, with no edit to any of them; and the registry
and the Draw type behave."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from hirune.families import FAMILIES, Batch, Draw, Family, get_family, register
from hirune.objectives import Loss
from hirune.training import TrainConfig, load, train


@dataclass(frozen=True)
class GaussianNetConfig:
    dim: int = 2


class GaussianNet(nn.Module):
    """A diagonal Gaussian N(mu, diag(exp(2 log_sigma))): the smallest density model."""

    def __init__(self, config: GaussianNetConfig):
        super().__init__()
        self.config = config
        self.mu = nn.Parameter(torch.zeros(config.dim))
        self.log_sigma = nn.Parameter(torch.zeros(config.dim))

    def forward(self, x: Tensor) -> Tensor:  # log p(x), (B,)
        z = (x - self.mu) * torch.exp(-self.log_sigma)
        return (-0.5 * z.pow(2) - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(1)


@dataclass(frozen=True)
class GaussianConfig:
    temperature: float = 1.0           # of the previews and samples


@dataclass
class GaussianDraw(Draw):
    noise: Tensor | None = None        # jitter added to the data (a stand-in for any random input)


class Gaussian(Family):
    name = "gaussian-test"
    Config = GaussianConfig
    resumable = ("temperature",)

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        self.model = GaussianNet(GaussianNetConfig(**(network_config or {"dim": data.shape[0]}))).to(device)

    def draw(self, n, generator):
        return GaussianDraw(1e-3 * torch.randn((n, *self.data.shape), generator=generator, device=self.device))

    def loss(self, forward, batch: Batch, draw: GaussianDraw, step: int) -> Loss:
        per_sample = -forward(batch.x + draw.noise) / batch.x.shape[1]
        return Loss(per_sample.mean(), per_sample.detach(), torch.zeros(len(per_sample)))

    def preview(self, n):
        return self.generate(n, seed=self.cfg.seed)[0]

    def generate(self, n, sampler=None, steps=None, spacing=None, seed=0, **options):
        g = torch.Generator(device=self.device).manual_seed(seed)
        z = torch.randn((n, *self.data.shape), generator=g, device=self.device) * self.config.temperature
        with torch.no_grad():
            return self.model.mu + z * self.model.log_sigma.exp(), None


@pytest.fixture
def gaussian():
    register(Gaussian)
    yield Gaussian
    del FAMILIES[Gaussian.name]


def config(tmp_path, **kw) -> TrainConfig:
    return TrainConfig.from_dict({"family": "gaussian-test", "model": "gaussian", "dataset": "rings",
                                  "steps": 40, "batch_size": 64, "lr": 0.05, "warmup": 1, "log_every": 1,
                                  "ckpt_every": 20, "sample_every": 40, "num_samples": 256,
                                  "out": str(tmp_path / "run"), **kw})


def test_a_new_family_trains_resumes_and_loads_through_the_shared_machinery(gaussian, tmp_path):
    trainer = train(config(tmp_path, temperature=0.5), progress=False)
    data = trainer.family.train_data.data
    # maximum likelihood: mu and sigma reach the data's mean and std
    assert torch.allclose(trainer.model.mu, data.mean(0), atol=0.05)
    assert torch.allclose(trainer.model.log_sigma.exp(), data.std(0), rtol=0.1)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert (tmp_path / "run" / "samples" / "step_00000040.png").is_file()
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000040" / "state.json").read_text())
    assert state["config"]["family"] == "gaussian-test" and state["data"]["shape"] == [2]
    # exact resume: a run stopped at step 20 and resumed equals the uninterrupted one
    other = config(tmp_path / "b", temperature=0.5)
    train(other, stop_after=20, progress=False)
    resumed = train(dataclasses.replace(other, resume=True), progress=False)
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    # the light loader: the EMA weights, the family's own settings, its samples
    run = load(tmp_path / "run")
    assert isinstance(run, Gaussian) and run.step == 40 and run.config.temperature == 0.5
    for name, shadow in trainer.ema.shadow.items():
        assert torch.equal(run.model.state_dict()[name], shadow)
    x, _ = run.generate(1000)
    assert x.shape == (1000, 2)


def test_a_family_rejects_settings_it_does_not_have(gaussian, tmp_path):
    with pytest.raises(ValueError, match="temperature"):
        config(tmp_path, prediction="v")
    with pytest.raises(ValueError, match="unknown family"):
        get_family("nope")
    with pytest.raises(ValueError, match="taken"):
        register(Gaussian)


def test_draw_slices_every_drawn_field_and_keeps_absent_ones():
    @dataclass
    class Two(Draw):
        a: Tensor | None = None
        b: Tensor | None = None

    d = Two(a=torch.arange(6)).slice(slice(2, 4))
    assert torch.equal(d.a, torch.tensor([2, 3])) and d.b is None


def test_the_built_in_families_are_registered():
    assert {"diffusion", "normalizing_flow", "autoencoder", "classifier"} <= set(FAMILIES)
