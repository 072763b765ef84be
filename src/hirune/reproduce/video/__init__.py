"""The video notes: CogVideoX's pieces on the moving digits, each trained at the budget.

    vae.py          video-vae: the 3D causal VAE against the image KL autoencoder frame by frame
    cogvideox.py    cogvideox: the expert transformer and its ablations; explicit uniform times steady the loss
    inversion.py    video-inversion: DDIM inversion of clips, plain against reference attention and exact
    progressive.py  progressive: 16 x 16 then 32 x 32 (positions extrapolated / interpolated) against scratch
    cogvideo.py     cogvideo: autoregressive frames of image tokens, from a dalle run against from scratch
"""

from __future__ import annotations

from . import cogvideox, vae
from . import cogvideo, inversion, progressive

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
    # issue 22: DDIM inversion of video, progressive training, CogVideo
    ("video-inversion", "DDIM inversion of video (the CogVideoX development note): plain inversion sampled back at "
                        "scale 1 returns the clip, under guidance 6 it fails; reference attention to the inversion's "
                        "trajectory recovers most of it, exact (fixed-point) inversion reconstructs; an inverse "
                        "schedule without the run's SNR shift fails even at scale 1 (PSNR, edits)",
     {"tiny": "6 s", "small": "12 min", "full": "1 h"}, inversion.video_inversion_note),
    ("progressive", "progressive training (CogVideoX sec. 3.2): 16 x 16 first, then 32 x 32 from its weights with the "
                    "positions extrapolated or interpolated; neither works before training at the new size, "
                    "extrapolation ends lower; against scratch at 32 x 32 with the same steps and the same CPU time "
                    "(fixed-draw loss, the evaluator's measures)",
     {"tiny": "7 s", "small": "15-20 min", "full": "1.5 h"}, progressive.progressive_note),
    ("cogvideo", "CogVideo: autoregressive frames of image tokens started from a text-to-image (dalle) run draw "
                 "frames as good as the image model's, the same network from scratch does not; key frames at gap "
                 "4, recursive interpolation to 9 and 17 frames (the evaluator's measures)",
     {"tiny": "8 s", "small": "12 min", "full": "1 h"}, cogvideo.cogvideo_note),
]
