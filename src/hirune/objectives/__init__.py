"""Training objectives: what each family minimises.

    loss.py        Loss: the scalar, per-example values, times and named terms
    diffusion.py   eps / x0 / v / velocity regression, denoising score matching, flow matching
                   (independent or minibatch-OT coupling), Improved DDPM's hybrid loss and
                   its loss-aware distribution of times (LossAwareTimes)
    weighting.py   min-SNR-gamma and the likelihood weighting of score SDEs
    classifier.py  the cross-entropy of a noise-aware classifier
    nll.py         a normalizing flow's exact negative log-likelihood
    prior.py       DreamBooth's prior-preservation loss (instance + lambda x class)
    autoencoder.py the first stage of latent diffusion: reconstruction, KL / VQ terms, the
                   perceptual distance, the adversarial losses, the latents' scale

Every objective has the signature `objective(model, process, x0, *, cond=None, generator=None,
t=None, noise=None) -> Loss` (the autoencoder's takes the model and images only).
"""

from .classifier import classifier_loss
from .diffusion import (COUPLINGS, OBJECTIVES, REGRESSION_TARGETS, LossAwareTimes, discretized_gaussian_log_likelihood,
                        flow_matching_loss, hybrid_loss, normal_kl, ot_pairing, regression_loss, sample_times,
                        score_matching_loss, vlb_terms)
from .loss import Loss
from .nll import nll_loss
from .prior import prior_preservation_loss
from .weighting import (WEIGHTINGS, likelihood_mean_weight, likelihood_weight, log_snr_range, min_snr_weight,
                        sample_likelihood_times)

__all__ = ["COUPLINGS", "OBJECTIVES", "REGRESSION_TARGETS", "WEIGHTINGS", "Loss", "LossAwareTimes",
           "classifier_loss", "discretized_gaussian_log_likelihood", "flow_matching_loss", "hybrid_loss",
           "likelihood_mean_weight", "likelihood_weight", "log_snr_range", "min_snr_weight", "nll_loss", "normal_kl",
           "ot_pairing", "prior_preservation_loss", "regression_loss", "sample_likelihood_times", "sample_times",
           "score_matching_loss", "vlb_terms"]
