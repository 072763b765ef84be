"""Measures of generated samples.

    distances.py  sliced Wasserstein and energy distances between point sets; the straightness
                  of sampling paths; PSNR of images
    evaluator.py  the shipped digit classifier (our stand-in for Inception, trained here), the
                  Frechet distance in its features and its class accuracy
"""

from .distances import energy_distance, psnr, sliced_wasserstein, straightness
from .evaluator import EVALUATED, DigitClassifier, evaluate_images, frechet_distance, load_evaluator

__all__ = ["EVALUATED", "DigitClassifier", "energy_distance", "evaluate_images", "frechet_distance",
           "load_evaluator", "psnr", "sliced_wasserstein", "straightness"]
