"""Real-image editing by DDIM inversion (Song et al. 2021, sec. 4.3; SDEdit, Meng et al. 2022).

The deterministic sampler (DDIM; the Euler step of the flow ODE for flows) run backwards
maps an image to the noise it would have come from; sampling from that noise under the
same condition gives the image back (exactly so with the fixed-point inversion,
`exact=True`), and sampling under another condition edits it: the layout of the noise is
kept, the class (text runs: what the caption says) changes.  `strength` < 1 inverts only
the last fraction of the grid, to an intermediate noise level, and resamples from there
(SDEdit with a deterministic encoder): less change, more of the original kept.

Latent diffusion runs do all of this in their latent space: the image is encoded to the
scaled posterior mean (`Diffusion.encode`), inverted and resampled there, and decoded at the
end, so a reconstruction can be no better than the autoencoder's own (`hirune invert`
prints that PSNR beside the inversion's).

    run = load("runs/cond-mnist5k")
    x, label = load_image_for(run, "test:17")             # or a PNG / JPEG path
    noise = invert(run, x, labels=torch.tensor([3])).x
    edited = edit(run, x, source=3, target=8, scale=2.0)
    edited = edit(text_run, x, "a thick handwritten seven", "a thin handwritten seven")
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor

from ..sampling import SampleOutput, ddim, ddim_invert
from ..sampling.timesteps import default_spacing, time_grid


def load_image_for(run, source: str) -> tuple[Tensor, int | None]:
    """(1, C, H, W) in [-1, 1] for the run's data shape, and its label where known:
    `test:N` / `train:N` picks image N of a split of the run's dataset; anything else is
    read as an image file (converted to the run's channels, resized to its size)."""
    _check(run)
    return read_image(run.data, source)


def read_image(fmt, source: str) -> tuple[Tensor, int | None]:
    """`load_image_for` for any run on images of the `DataFormat` fmt (whatever the run
    does with them): `test:N` / `train:N` of its dataset, or an image file."""
    from ..data import load_dataset

    if ":" in source and source.split(":", 1)[0] in ("test", "train"):
        split, index = source.split(":", 1)
        data = load_dataset(fmt.name, split)
        if not index.isdigit() or int(index) >= len(data.data):
            raise ValueError(f"{source!r}: index must be 0..{len(data.data) - 1} for the {split} split")
        i = int(index)
        label = int(data.labels[i]) if data.labels is not None else None
        return data.data[i:i + 1].clone(), label
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{source!r} is neither an image file nor test:N / train:N")
    from PIL import Image, UnidentifiedImageError

    c, h, w = fmt.shape
    try:
        img = Image.open(path).convert("L" if c == 1 else "RGB").resize((w, h), Image.BILINEAR)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read {source!r} as an image: {e}") from None
    x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().reshape(h, w, c).permute(2, 0, 1)
    return (x / 127.5 - 1)[None], None


def caption_for(run, source: str) -> str | None:
    """The training-style caption of image `source` for a text run ("test:N" / "train:N":
    its label, thickness against its split, slant; template 0), or None where unknown."""
    from ..data import load_dataset
    from ..data.captions import Captioner

    if run.text is None or source.split(":", 1)[0] not in ("test", "train"):
        return None
    split, index = source.split(":", 1)
    data = load_dataset(run.data.name, split)
    return Captioner(data.data, data.labels).captions(torch.tensor([int(index)]), torch.tensor([0]))[0]


def _check(run) -> None:
    if getattr(run, "denoiser", None) is None or run.data.kind != "image":
        raise ValueError(f"inversion and editing need a diffusion, score or flow-matching run on images; this is a "
                         f"{run.name} run on {run.data.kind} data")


def _grid(run, steps: int, strength: float) -> Tensor:
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    ts = time_grid(run.process, steps, default_spacing(run.process))
    return ts[len(ts) - max(1, math.ceil(strength * len(ts))):]


def invert(run, x0: Tensor, *, labels: Tensor | None = None, prompts: list[str] | None = None, denoiser=None,
           steps: int = 50, strength: float = 1.0, exact: bool = True) -> SampleOutput:
    """The noise (at the grid's first time) that DDIM maps to x0 under the condition (labels,
    or one prompt per image for text runs); latent diffusion inverts x0's latent, and the
    noise has the latent shape."""
    _check(run)
    d = denoiser if denoiser is not None else run.denoiser
    with torch.no_grad():
        return ddim_invert(d, run.encode(x0), _grid(run, steps, strength), exact=exact,
                           cond=run.condition(labels, prompts))


def regenerate(run, noise: Tensor, *, labels: Tensor | None = None, prompts: list[str] | None = None,
               denoiser=None, steps: int = 50, strength: float = 1.0) -> SampleOutput:
    """DDIM from `noise` at the grid's first time down to the data; x is an image (latent
    diffusion decodes it; its trajectory stays in the latent space)."""
    d = denoiser if denoiser is not None else run.denoiser
    with torch.no_grad():
        out = ddim(d, noise, _grid(run, steps, strength), cond=run.condition(labels, prompts))
        return dataclasses.replace(out, x=run.decode(out.x))


def edit(run, x0: Tensor, source, target, *, scale: float = 1.0, steps: int = 50, strength: float = 1.0,
         exact: bool = True) -> tuple[Tensor, Tensor]:
    """Invert x0 under `source` and resample under `target`, both with classifier-free
    guidance at `scale` (1 = the plain conditional model).  Class-conditional runs: classes
    (ints, or (n,) tensors: one per image); text runs: prompts (a string, or one per image),
    e.g. "a thick handwritten seven" -> "a thin handwritten seven".  Returns (edited images,
    the noise)."""
    _check(run)
    n, cond = len(x0), {}
    if run.text is not None:
        for name, value in (("source", source), ("target", target)):
            value = [value] * n if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)) or len(value) != n or not all(isinstance(v, str) for v in value):
                raise ValueError(f"a text run edits by prompt: {name} must be a string or {n} strings")
            cond[name] = {"prompts": value}
    elif run.config.class_conditional:
        k = run.data.num_classes
        for name, value in (("source", source), ("target", target)):
            value = torch.as_tensor(value).long().expand(n)
            if ((value < 0) | (value >= k)).any():
                raise ValueError(f"{name} class {value.tolist()} is out of range; valid: 0..{k - 1}")
            cond[name] = {"labels": value}
    else:
        raise ValueError("editing needs a class-conditional run (class_conditional=true) or a text-conditioned "
                         "one (text_encoder=tiny|minilm|tiny+minilm)")
    d = run.guide("cfg", scale) if scale != 1 else run.denoiser
    noise = invert(run, x0, **cond["source"], denoiser=d, steps=steps, strength=strength, exact=exact).x
    out = regenerate(run, noise, **cond["target"], denoiser=d, steps=steps, strength=strength)
    return out.x, noise
