"""The video notes: CogVideoX's pieces on the moving digits, each trained at the budget.

    vae.py   video-vae: the 3D causal VAE against the image KL autoencoder frame by frame
"""

from __future__ import annotations

from . import vae

# (name, shows, cost per budget, run): `registry._notes()` makes each a Note (this package never imports the
# registry, which imports it)
NOTES = [
    ("video-vae", "CogVideoX's 3D causal VAE (4x time, 4x space) against the image KL autoencoder applied frame by "
                  "frame, PSNR per frame index on the moving digits: the first frame, encoded alone, is reconstructed "
                  "best; at digit scale the per-frame autoencoder reconstructs better with fewer numbers a clip (what "
                  "the video VAE buys is a 3x shorter sequence)",
     {"tiny": "6 s", "small": "6 min", "full": "40 min"}, vae.video_vae_note),
]
