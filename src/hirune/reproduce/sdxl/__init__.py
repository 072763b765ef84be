"""SDXL's conditioning tricks at digit scale (Podell et al. 2023), each measured on what it is for;
one note a trick, each training its runs at the budget (the small UNet of `common.UNET`):

    micro.py     sdxl-micro: told the original size and crop, against the same augmentations untold
    offset.py    sdxl-offset: noise offset and the spread of the samples' brightness
    refiner.py   sdxl-refiner: base alone, base + refiner, the base trained as many more steps
    buckets.py   sdxl-buckets: multi-aspect training, per bucket accuracy and Frechet distance
"""

from __future__ import annotations

from . import buckets, micro, offset, refiner

# (name, shows, cost per budget, run): `registry._notes()` makes each a Note (this package never imports the
# registry, which imports it)
NOTES = [
    ("sdxl-micro", "SDXL's micro-conditioning: told each image's original size, the samples' sharpness follows the "
                   "size asked (as the degraded data's does) where the same augmentations untold learn blur; told "
                   "the crop, whether the digit moves as asked (centre of mass); Frechet distance told vs untold",
     {"tiny": "4 s", "small": "~30 min", "full": "1 h"}, micro.micro_note),
    ("sdxl-offset", "noise offset (eps + 0.1 eps_c per image): the spread of the samples' mean brightness against the "
                    "test digits' (digits at a random brightness, eps prediction, linear schedule), and the Frechet "
                    "distance, at offset 0 and 0.1",
     {"tiny": "3 s", "small": "30 min", "full": "1 h"}, offset.offset_note),
    ("sdxl-refiner", "SDXL's refiner (trained on the 200 lowest of 1000 levels, handed over at 0.2): base alone "
                     "against base + refiner against the base trained as many more steps as the refiner took "
                     "(Frechet distance)",
     {"tiny": "4 s", "small": "~30 min", "full": "1 h"}, refiner.refiner_note),
    ("sdxl-buckets", "SDXL's multi-aspect buckets (28x28, 32x24, 24x32, each batch one bucket): per bucket the "
                     "evaluator's accuracy and the Frechet distance to that bucket's real digits; samples at each "
                     "shape in the figure",
     {"tiny": "3 s", "small": "~30 min", "full": "1 h"}, buckets.buckets_note),
]
