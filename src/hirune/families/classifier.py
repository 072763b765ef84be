"""The classifier family: a noise-aware classifier p(y | x_t, t) (ADM's encoder UNet,
`models.classifier`), trained by cross-entropy on x_t drawn exactly as a denoiser's, on the
process of the diffusion runs it will guide (Dhariwal & Nichol 2021).  Its section names
that process; it needs a labelled dataset; it has no previews; its evaluation is its test
accuracy at several noise levels."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .. import objectives as O
from ..process import make_process
from .base import Batch, Draw, Family, check_eval_counts, checked_process, refuse_extras, register


@dataclass(frozen=True)
class ClassifierConfig:
    process: str = "ddpm"
    process_config: dict = field(default_factory=dict)


@dataclass
class ClassifierDraw(Draw):
    t: Tensor | None = None
    noise: Tensor | None = None


@register
class Classifier(Family):
    name = "classifier"
    Config = ClassifierConfig
    networks = ("classifier",)
    has_previews = False

    @classmethod
    def check(cls, cfg, config) -> None:
        super().check(cfg, config)
        checked_process(config)

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        if not data.num_classes:
            raise ValueError(f"a classifier needs labels; {data.name} has none")
        self.process = make_process(config.process, **config.process_config)
        out = {k: v for k, v in cfg.model_config.items() if k != "num_classes"}  # the data's classes
        out.setdefault("time_scale", 1000.0 / self.process.T if self.process.discrete else 1000.0)
        out.update(num_classes=data.num_classes)
        out.setdefault("in_channels", data.shape[0])
        self.model = self._build(cfg.model, network_config or out)

    @property
    def uses_labels(self) -> bool:
        return True

    def draw(self, n: int, generator: torch.Generator) -> ClassifierDraw:
        t = O.sample_times(self.process, n, generator, self.device)
        return ClassifierDraw(t, torch.randn((n, *self.data.shape), generator=generator, dtype=torch.float32,
                                             device=self.device))

    def loss(self, forward: nn.Module, batch: Batch, draw: ClassifierDraw, step: int) -> O.Loss:
        return O.classifier_loss(forward, self.process, batch.x, noise=draw.noise, cond={"y": batch.y}, t=draw.t)

    # --- inference ------------------------------------------------------------------
    def generate(self, n: int, *args, **options):
        raise ValueError("this run is a classifier; sample from a diffusion run and pass it as the classifier")

    def evaluate(self, n: int | None = None, *, nll: int = 0, text_accuracy: int = 0, denoising_error: int = 0, **unused) -> dict:
        """Test accuracy at several noise levels on the whole test split (`evaluation.classifier`;
        n is not used)."""
        from ..evaluation.classifier import classifier_accuracy

        check_eval_counts(self, self.data, n, nll, text_accuracy, denoising_error)
        if nll:
            raise ValueError("a noise-aware classifier has no density: --nll needs a flow, diffusion, score "
                             "or flow-matching run")
        refuse_extras(self, text_accuracy=text_accuracy, denoising_error=denoising_error)
        return {"step": self.step, "dataset": self.data.name,
                **classifier_accuracy(self.model, self.process, self.data.name)}

    def write_preview(self, x: Tensor, path, step: int):
        raise ValueError("a classifier run has no previews")
