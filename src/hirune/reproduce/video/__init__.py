"""The video notes: CogVideoX's pieces on the moving digits, each trained at the budget.

    vae.py        video-vae: the 3D causal VAE against the image KL autoencoder frame by frame
    cogvideox.py  cogvideox: the expert transformer and its ablations; explicit uniform times steady the loss
"""

from __future__ import annotations

from . import cogvideox, vae

# (name, shows, cost per budget, run): `registry._notes()` makes each a Note (this package never imports the
# registry, which imports it)
NOTES = [
    ("video-vae", "CogVideoX's 3D causal VAE (4x time, 4x space) against the image KL autoencoder applied frame by "
                  "frame, PSNR per frame index on the moving digits: the first frame, encoded alone, is reconstructed "
                  "best; at digit scale the per-frame autoencoder reconstructs better with fewer numbers a clip (what "
                  "the video VAE buys is a 3x shorter sequence)",
     {"tiny": "6 s", "small": "10 min", "full": "40 min"}, vae.video_vae_note),
    ("cogvideox", "CogVideoX in miniature, text to video on the moving digits, against its ablations (shared adaLN, "
                  "learned positions, i.i.d. times, frame packing): explicit uniform times steady the training loss "
                  "(its step-to-step spread about half that of i.i.d. times); the samples scored per frame, by "
                  "direction and consistency beside the real clips",
     {"tiny": "7 s", "small": "16 min", "full": "1.5 h"}, cogvideox.cogvideox_note),
]
