"""The notes `hirune reproduce` covers, by name: what each shows and what it costs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BUDGETS = ("tiny", "small", "full")


@dataclass(frozen=True)
class Note:
    name: str
    shows: str                      # the claim, one line
    cost: dict[str, str]            # budget -> wall time on 2 CPU cores, in words
    run: Callable                   # run(budget) -> playbook.report.Report


def _playbook(name: str, shows: str) -> Note:
    """A training note measured by `hirune playbook NAME` (its defaults at every budget: seconds)."""
    def run(budget: str):
        from ..playbook import get as playbook

        return playbook(name)[0]()
    return Note(name, shows, {b: "10-20 s" for b in BUDGETS}, run)


def _notes() -> dict[str, Note]:
    from . import memory, sampling
    from . import backbones, digits, latent, likelihood, systems, toys
    from . import sdxl

    notes = [
        Note("ddim", "with few steps DDIM (eta = 0) beats DDPM's ancestral sampler; eta -> 1 turns it into DDPM; "
                     "with many steps every sampler is as close as two exact samples (the exact mixture, sliced "
                     "Wasserstein)",
             {"tiny": "2 s", "small": "30 s", "full": "3 min"}, sampling.ddim_note),
        Note("flow-matching", "flow matching's straight interpolation gives ODE paths that bend half as much as the VP "
                              "SDE's (straightness, the exact mixture's velocity); measured beside it: whether that "
                              "buys fewer Euler steps (here it does not: VP's final denoising jump wins at 2-16 steps)",
             {"tiny": "2 s", "small": "20 s", "full": "2 min"}, sampling.flow_note),
        Note("classifier-guidance", "with the exact noise-aware classifier, classifier guidance at scale s is "
                                    "classifier-free guidance at s (Bayes: grad log p(y | x) = grad log p(x | y) - "
                                    "grad log p(x)): the same samples, the same trade-off",
             {"tiny": "2 s", "small": "1 min", "full": "4 min"}, sampling.classifier_guidance_note),
        Note("guidance", "classifier-free guidance trades diversity for fidelity: as the scale grows, more samples "
                         "land in their class and their spread shrinks below the class's own (the exact mixture)",
             {"tiny": "2 s", "small": "40 s", "full": "3 min"}, sampling.guidance_note),
        Note("score-sde", "with the exact score, the probability-flow ODE reaches the exact samples' level with far "
                          "fewer network evaluations than the reverse SDE; the Langevin corrector helps on a coarse "
                          "grid of the VE SDE (VP and VE SDEs, sliced Wasserstein)",
             {"tiny": "3 s", "small": "1 min", "full": "4 min"}, sampling.score_sde_note),
        Note("zero", "ZeRO's figure 1: 7.5 B parameters on 64 GPUs need 120 GB each under data parallelism, "
                     "31.4 / 16.6 / 1.9 GB with optimizer states / + gradients / + parameters sharded",
             {b: "< 1 s" for b in BUDGETS}, memory.zero_note),
        Note("ddpm", "DDPM's L_simple (the unweighted eps error) samples better than the true variational bound's "
                     "weighting, and the two fixed variances (beta, beta-tilde) sample alike (digits, the "
                     "evaluator's Frechet distance)",
             {"tiny": "4 s", "small": "13 min", "full": "2 h"}, digits.ddpm_note),
        Note("improved-ddpm", "Improved DDPM's learned variance (L_hybrid) keeps sample quality at few respaced steps "
                              "where the fixed variances degrade, and improves the variational bound; the cosine "
                              "schedule beside the linear one (digits, Frechet distance, bits/dim)",
             {"tiny": "5 s", "small": "25 min", "full": "4 h"}, digits.improved_ddpm_note),
        Note("v-prediction", "on a zero-terminal-SNR schedule eps-prediction is undefined at the last step (refused) "
                             "while v-prediction works; the rescaled schedule with trailing spacing against linear "
                             "betas with leading spacing: the samples' brightness beside the data's (digits)",
             {"tiny": "4 s", "small": "9 min", "full": "1 h"}, digits.v_prediction_note),
        # the backbones (issue 22): latent diffusion, DiT, U-ViT
        Note("latent-diffusion", "at the same wall-clock budget the UNet on a KL autoencoder's latents runs more "
                                 "steps and samples better digits than the same recipe on pixels (MNIST 5k, the "
                                 "evaluator's Frechet distance)",
             {"tiny": "10 s", "small": "6 min", "full": "25 min"}, latent.latent_diffusion_note),
        Note("dit", "DiT's Gflops set its quality: at the same training steps, a smaller patch or a bigger model "
                    "(more forward Gflops) gives a lower Frechet distance (digits)",
             {"tiny": "5 s", "small": "8 min", "full": "1 h"}, backbones.dit_note),
        Note("uvit", "U-ViT's long skips matter: the same network without them samples worse at the same steps "
                     "(digits, Frechet distance)",
             {"tiny": "5 s", "small": "6 min", "full": "40 min"}, backbones.uvit_note),
    ]
    notes += [Note(*fields) for fields in sdxl.NOTES]   # SDXL's conditioning tricks (issue 22), one note a trick
    notes += [
        Note("reflow", "reflow (2-rectified flow, trained on a 1-RF's own noise-sample pairs) has straighter paths "
                       "than 1-RF, so few Euler steps get closer to the data; beside minibatch-OT flow matching "
                       "(trained MLPs on the eight Gaussians, sliced Wasserstein against real vs real)",
             {"tiny": "6 s", "small": "6-13 min", "full": "30 min"}, toys.reflow_note),
        Note("score-models", "NCSN and the VE, VP and sub-VP score SDEs trained on the eight Gaussians (known "
                             "density): samples against real vs real, and held-out NLL through the probability-flow "
                             "ODE beside the true density's, with and without the likelihood weighting",
             {"tiny": "5 s", "small": "14-27 min", "full": "3 h"}, toys.score_models_note),
        Note("normalizing-flows", "RealNVP and MAF give exact likelihoods: their log-determinant is the autograd "
                                  "Jacobian's, and on 2-D toys their held-out NLL beats a fitted Gaussian and "
                                  "approaches the true density's",
             {"tiny": "3 s", "small": "2-3 min", "full": "10 min"}, likelihood.normalizing_flows_note),
    ]
    from . import bits, guided
    notes += [
        Note("likelihood", "bits/dim on the digits for every family at equal steps x batch, scored the same way: "
                           "flows exactly, DDPM, the VP SDE (with and without Song et al.'s likelihood weighting) "
                           "and flow matching through the probability-flow ODE",
             {"tiny": "8 s", "small": "10 min", "full": "3 h"}, bits.likelihood_note),
        Note("guidance-digits", "on trained digit models, classifier-free guidance trades diversity for class "
                                "accuracy as the scale grows (the evaluator's accuracy and Frechet distance); "
                                "classifier guidance of the same network's unconditional mode beside it",
             {"tiny": "3 s", "small": "4 min", "full": "30 min"}, guided.guidance_digits_note),
    ]
    from . import video
    notes += [Note(*spec) for spec in video.NOTES]
    notes += [Note(*fields) for fields in systems.NOTES]
    from . import text
    notes += [Note(*fields) for fields in text.NOTES]
    from ..playbook.registry import PLAYBOOKS

    notes += [_playbook(name, shows) for name, (_, shows) in PLAYBOOKS.items()]
    return {n.name: n for n in notes}


NOTES: dict[str, Note] = _notes()


def get(name: str) -> Note:
    """The note called `name`; ValueError naming the valid ones."""
    if name not in NOTES:
        raise ValueError(f"unknown note {name!r}; valid: {', '.join(NOTES)} (hirune reproduce --list)")
    return NOTES[name]


def check_budget(budget: str) -> None:
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r} is not valid; valid: {list(BUDGETS)}")
