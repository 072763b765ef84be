"""The text-to-image notes of Imagen (Saharia et al. 2022): each trains its runs at the budget.

    thresholding.py   thresholding: static and dynamic thresholding of the x0 estimate at large guidance scales
    imagen.py         imagen: the cascade (base 14 x 14 + SR 14 -> 28, noise conditioning augmentation) against
                      one 28 x 28 model of the same size and CPU budget
    text_to_image.py  text-to-image: the digit the caption names, training and held-out phrasings, a small
                      trained text encoder against the frozen MiniLM
"""

from __future__ import annotations

from . import imagen, text_to_image, thresholding

# (name, shows, cost per budget, run): `registry._notes()` makes each a Note (this package never imports the
# registry, which imports it)
NOTES = [
    ("thresholding", "Imagen's thresholding of the x0 estimate at large classifier-free guidance scales: static and "
                     "dynamic keep the raw samples in [-1, 1], dynamic also pushes saturated pixels inward; measured "
                     "beside none: saturation, Frechet distance and the digit named per scale",
     {"tiny": "3 s", "small": "5-7 min", "full": "25 min"}, thresholding.thresholding_note),
    ("imagen", "Imagen's cascade (14 x 14 base + 14 -> 28 super-resolution) against one 28 x 28 model of the same "
               "size and CPU budget; noise conditioning augmentation lets the SR model use a noised low-res input, "
               "the SR model trained without it cannot (MNIST 5k, Frechet distance, the digit named)",
     {"tiny": "6 s", "small": "10 min", "full": "50 min"}, imagen.imagen_note),
    ("text-to-image", "text to image: the model draws the digit its caption names; a frozen pretrained sentence "
                      "encoder (MiniLM) follows held-out phrasings too, a small text encoder trained with the UNet "
                      "mostly does not",
     {"tiny": "8 s", "small": "7-10 min", "full": "40 min"}, text_to_image.text_to_image_note),
]
