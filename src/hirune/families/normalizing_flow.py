"""The normalizing-flow family: RealNVP, Glow and MAF (`models.normalizing_flow`), trained by
exact maximum likelihood on dequantized data; no process and no denoiser.  A sample is one
pass of the inverse on z ~ N(0, T^2 I)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import objectives as O
from .base import (Batch, Context, Draw, Family, check_eval_counts, check_sample_count, check_test_count, refuse_extras,
                   register, sample_chunks)


@dataclass
class FlowDraw(Draw):
    """u: the uniform dequantization noise of each example (None for continuous data)."""

    u: Tensor | None = None


@register
class NormalizingFlow(Family):
    name = "normalizing_flow"
    networks = ("normalizing_flow",)

    def __init__(self, cfg, config, data, device, references=None, network_config=None):
        super().__init__(cfg, config, data, device, references)
        self.model = self._build(cfg.model, network_config or {**cfg.model_config, "shape": tuple(data.shape)})

    def prepare(self, data, context: Context) -> None:
        """Data-dependent initialisation (ActNorm) on a fixed batch, before the EMA copies the
        weights; its own generator, so the training noise stream is unchanged."""
        super().prepare(data, context)
        g = torch.Generator().manual_seed(self.cfg.seed + 1)
        idx = torch.randperm(len(data.data), generator=g)[:min(512, len(data.data))]
        x = data.data[idx]
        if data.levels:
            from ..data.dequantize import check_quantized, dequantize

            check_quantized(data.data, data.levels)
            x = dequantize(x, data.levels, g)
        with torch.no_grad():
            self.model.train()
            self.model.log_prob(x.to(self.device))

    def draw(self, n: int, generator: torch.Generator) -> FlowDraw:
        if not self.data.levels:
            return FlowDraw()
        return FlowDraw(torch.rand((n, *self.data.shape), generator=generator, dtype=torch.float32,
                                   device=self.device))

    def loss(self, forward: nn.Module, batch: Batch, draw: FlowDraw, step: int) -> O.Loss:
        return O.nll_loss(forward, None, batch.x, levels=self.data.levels, u=draw.u)

    def preview(self, n: int) -> Tensor:
        g = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        return self.model.sample(n, generator=g)

    # --- inference ------------------------------------------------------------------
    def generate(self, n: int, sampler: str | None = None, steps: int | None = None, spacing: str | None = None,
                 seed: int = 0, *, temperature: float = 1.0, trajectory: bool = False, denoiser=None,
                 labels=None, label=None, per_class: bool = False, prompt=None, guided_labels: bool = False,
                 progress: bool = True, **unused):
        """n samples: z ~ N(0, temperature^2 I) from `seed`, inverted in one pass (no sampler;
        the trajectory is [z, x]).  Returns (SampleOutput, None): flows here are unconditional.
        More than `SAMPLE_CHUNK` samples are drawn in chunks, the k-th from seed + k."""
        from ..sampling import SampleOutput

        if denoiser is not None or guided_labels:
            raise ValueError("guidance needs a diffusion or flow-matching run; this is a normalizing flow")
        if labels is not None or label is not None or per_class:
            raise ValueError("flows here are unconditional: no labels or guidance")
        if prompt is not None or unused.get("prompts") is not None:
            raise ValueError("--prompt needs a text-conditioned run (text_encoder=tiny|minilm|tiny+minilm)")
        n = check_sample_count(self.data, n, trajectory)
        xs = []
        for rows, chunk_seed in sample_chunks(n, seed):
            g = torch.Generator(device=self.device).manual_seed(chunk_seed)
            with torch.no_grad():
                z = torch.randn(rows.stop - rows.start, self.model.dim, generator=g, device=self.device) * temperature
                xs.append(self.model.decode(z))
        x = xs[0] if len(xs) == 1 else torch.cat(xs)
        return SampleOutput(x, 1, [z.reshape(x.shape), x] if trajectory else None), None

    def evaluate(self, n: int | None = None, *, seed: int = 0, nll: int = 0, denoiser=None, guided_labels: bool = False,
                 text_accuracy: int = 0, denoising_error: int = 0, **unused) -> dict:
        """n samples (None: EVAL_SAMPLES) scored against the test split; nll > 0: the exact NLL of that many test examples."""
        from ..evaluation.quality import sample_quality

        n = check_eval_counts(self, self.data, n, nll, text_accuracy, denoising_error)
        refuse_extras(self, text_accuracy=text_accuracy, denoising_error=denoising_error)
        out, _ = self.generate(n, seed=seed, denoiser=denoiser, guided_labels=guided_labels)
        metrics = {"step": self.step, "dataset": self.data.name, "sampler": "flow inverse", "nfe": out.nfe}
        metrics.update(sample_quality(self.data.name, self.data.kind, out.x))
        if nll:
            metrics.update(self.nll(nll, seed))
        return metrics

    def nll(self, n: int, seed: int = 0) -> dict:
        """The exact NLL of n held-out examples (change of variables; `evaluation.likelihood`)."""
        from ..evaluation.likelihood import flow_log_prob, nll_report

        check_test_count(self.data, "nll", n)
        return nll_report(self.data, n, seed, flow_log_prob(self.model))

