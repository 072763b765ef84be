"""unCLIP (Ramesh et al. 2022, "DALL-E 2"): text -> CLIP image embedding (the prior) -> image
(the decoder), and what a decoder of CLIP embeddings does with real images.

    pipe = UnCLIP(load("runs/prior-mnist5k"), load("runs/unclip-decoder-mnist5k"))
    x = pipe.text_to_image(["a handwritten seven"] * 8, prior_scale=1.0, decoder_scale=3.0)
    x = pipe.text_to_image(prompts, use_prior=False)       # ablation: CLIP's text embedding decoded
    x = pipe.variations(image, n=8)                          # sec. 3.1: one embedding, other seeds
    x = pipe.interpolate(image_a, image_b, steps=8)          # sec. 3.2
    x = pipe.text_diff(image, "a thin handwritten seven", "a thick handwritten seven")   # sec. 3.3

The prior (`families.prior`) and the decoder (a diffusion run with `clip=RUN`,
`families.embedding`) must be built on the same CLIP: their loaded CLIP runs' weights are
compared.  The prior is optional for everything but `text_to_image(use_prior=True)`.  A
text-conditioned decoder is given the prompts in text_to_image, and the empty caption
(trained by its caption dropout) where it decodes an image's embedding.

**Interpolation and text diffs** keep the decoder's noise fixed, as the paper does, so the
embedding alone changes along a strip: each image is mapped to its DDIM noise x_T by exact
DDIM inversion under its own embedding (`sampling.ddim_invert`, fixed-point), and decoded
by DDIM (eta = 0) from there.  An interpolation between images a and b decodes
z_k = slerp(z_a, z_b, k / (steps - 1)) from the noise slerp(x_T(a), x_T(b), same fraction)
(`noise="slerp"`, default: the ends reconstruct both images, and two Gaussian noises of
many dimensions are nearly orthogonal with equal norms, which slerp keeps), or from x_T(a)
throughout (`noise="a"`: one noise held fixed, so only the embedding moves).  A text diff
(sec. 3.3) moves the image's embedding toward a caption change,

    z_d = normalise(z_t(target) - z_t(source)),     z_theta = slerp(z_i, z_d, theta),

each z_theta decoded from the image's inverted noise (theta = 0 reconstructs the image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..sampling import ddim, ddim_invert
from ..sampling.timesteps import default_spacing, time_grid

NOISE_PATHS = ("slerp", "a")


def slerp(a: Tensor, b: Tensor, theta: float) -> Tensor:
    """Spherical interpolation of the rows of a and b (B, ...) (each row one vector, its
    elements flattened), theta in [0, 1]:

        slerp(a, b, theta) = sin((1 - theta) omega) / sin(omega) a + sin(theta omega) / sin(omega) b,

    omega the angle between the rows.  For unit a, b the result is the unit vector at angle
    theta omega from a along the great circle to b; otherwise the norms are interpolated
    the same way.  Rows at angle 0 give a (the limit); opposite rows are refused (no unique
    great circle)."""
    if a.shape != b.shape:
        raise ValueError(f"slerp of shapes {tuple(a.shape)} and {tuple(b.shape)}; they must match")
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    cos = (F.normalize(fa, dim=1) * F.normalize(fb, dim=1)).sum(1).clamp(-1, 1)
    omega = torch.arccos(cos)
    if (omega > math.pi - 1e-6).any():
        raise ValueError("slerp between opposite vectors is not defined (every great circle joins them)")
    small = omega < 1e-7
    sin = torch.sin(omega).where(~small, torch.ones_like(omega))
    wa = torch.where(small, 1 - theta * torch.ones_like(omega), torch.sin((1 - theta) * omega) / sin)
    wb = torch.where(small, theta * torch.ones_like(omega), torch.sin(theta * omega) / sin)
    return (wa[:, None] * fa + wb[:, None] * fb).to(a.dtype).view_as(a)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two networks hold the same tensors under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu())
                                          for k in sa)


def check_decoder(decoder) -> None:
    if getattr(decoder, "clip", None) is None or not getattr(decoder.config, "clip", ""):
        raise ValueError(f"the decoder must be an unCLIP decoder run (a diffusion run with clip=RUN, e.g. the preset "
                         f"unclip-decoder-mnist5k); this is a {getattr(decoder, 'name', type(decoder).__name__)} run "
                         "without CLIP embedding conditioning")


class UnCLIP:
    """A prior (or None) and a decoder built on the same CLIP run (see the module docstring)."""

    def __init__(self, prior, decoder):
        check_decoder(decoder)
        if prior is not None:
            if not hasattr(prior, "generate_embeddings") or getattr(prior, "clip", None) is None:
                raise ValueError("the prior must be an unCLIP prior run (family 'prior', e.g. runs/prior-mnist5k), "
                                 f"not a {getattr(prior, 'name', type(prior).__name__)} run")
            if not same_weights(prior.clip.model, decoder.clip.model):
                raise ValueError(f"the prior was built on the CLIP run clip={getattr(prior.config, 'clip', '?')} and "
                                 f"the decoder on clip={decoder.config.clip}, whose weights differ; valid: a prior and "
                                 "a decoder trained on the same CLIP run")
        self.prior, self.decoder, self.clip = prior, decoder, decoder.clip

    # --- decoding embeddings --------------------------------------------------------
    def _denoiser(self, scale: float):
        return self.decoder.denoiser if scale == 1 else self.decoder.guide("cfg", scale)

    def _captions(self, n: int, prompts: list[str] | None = None) -> list[str] | None:
        """What a text decoder reads: the prompts, else the empty caption; None for others."""
        if self.decoder.text is None:
            return None
        return list(prompts) if prompts is not None else [""] * n

    def decode(self, embeddings: Tensor, *, prompts: list[str] | None = None, decoder_scale: float = 1.0,
               sampler: str | None = None, steps: int | None = None, seed: int = 0, progress: bool = False) -> Tensor:
        """Images (N, C, H, W) of the decoder from CLIP image embeddings (N, D), guided at
        `decoder_scale` (null: the zero embedding and, for text decoders, the empty caption)."""
        n = len(embeddings)
        out, _ = self.decoder.generate(n, sampler, steps, None, seed, denoiser=self._denoiser(decoder_scale),
                                       embeddings=embeddings, prompts=self._captions(n, prompts), progress=progress)
        return out.x

    def text_to_image(self, prompts: Sequence[str], *, prior_scale: float = 1.0, decoder_scale: float = 1.0,
                      best_of: int | None = None, use_prior: bool = True, sampler: str | None = None,
                      steps: int | None = None, seed: int = 0, progress: bool = False) -> Tensor:
        """One image per prompt: the prior's embedding (CFG at prior_scale, best of `best_of`
        by similarity to the prompt; its own sampler and steps), decoded at decoder_scale with
        `sampler` / `steps`.  use_prior=False is the ablation: the prompt's CLIP text
        embedding goes to the decoder directly."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        prompts = list(prompts)
        if use_prior:
            if self.prior is None:
                raise ValueError("text_to_image with use_prior=True needs a prior run; give one, or use_prior=False "
                                 "(the CLIP text embedding decoded directly)")
            z = self.prior.generate_embeddings(prompts, scale=prior_scale, best_of=best_of, seed=seed,
                                               progress=progress)
        else:
            z = self.clip.embed_text(prompts)
        return self.decode(z, prompts=prompts, decoder_scale=decoder_scale, sampler=sampler, steps=steps, seed=seed,
                           progress=progress)

    # --- real images ----------------------------------------------------------------
    def _images(self, images: Tensor) -> Tensor:
        shape = tuple(self.decoder.data.shape)
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        if isinstance(images, Tensor) and images.dim() == len(shape):
            images = images[None]
        if not isinstance(images, Tensor) or tuple(images.shape[1:]) != shape:
            raise ValueError(f"images of shape {got} are not valid; valid: ({', '.join(map(str, shape))}) or "
                             f"(N, {', '.join(map(str, shape))}) in [-1, 1]")
        return images.float()

    def embed(self, images: Tensor) -> Tensor:
        """CLIP image embeddings (N, D) of images (N, C, H, W) in [-1, 1]."""
        return self.clip.embed_image(self._images(images))

    def variations(self, image: Tensor, n: int = 8, seed: int = 0, decoder_scale: float = 1.0, *,
                   sampler: str | None = None, steps: int | None = None) -> Tensor:
        """n images decoded from one image's CLIP embedding with seeds seed.. (sec. 3.1):
        what CLIP keeps of the image stays, the rest varies."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n={n!r} is not valid; valid: an integer >= 1")
        z = self.embed(image)
        if len(z) != 1:
            raise ValueError(f"variations are of one image; got {len(z)}")
        return self.decode(z.expand(n, -1), decoder_scale=decoder_scale, sampler=sampler, steps=steps, seed=seed)

    def _grid(self, ddim_steps: int) -> Tensor:
        if not isinstance(ddim_steps, int) or ddim_steps < 1:
            raise ValueError(f"ddim_steps={ddim_steps!r} is not valid; valid: an integer >= 1")
        return time_grid(self.decoder.process, ddim_steps, default_spacing(self.decoder.process))

    def invert(self, images: Tensor, embeddings: Tensor, *, ddim_steps: int = 50, decoder_scale: float = 1.0) -> Tensor:
        """The DDIM noise x_T (N, *sample_shape) each image comes from under its embedding:
        exact (fixed-point) DDIM inversion (latent decoders: of the image's latent)."""
        d, x = self._denoiser(decoder_scale), self.decoder.encode(self._images(images).to(self.decoder.device))
        cond = self.decoder.condition(prompts=self._captions(len(x)), embeddings=embeddings)
        with torch.no_grad():
            return ddim_invert(d, x, self._grid(ddim_steps), exact=True, cond=cond).x

    def regenerate(self, noise: Tensor, embeddings: Tensor, *, ddim_steps: int = 50,
                   decoder_scale: float = 1.0) -> Tensor:
        """DDIM (eta = 0) from the noise `noise` under the embeddings: images (N, C, H, W)."""
        cond = self.decoder.condition(prompts=self._captions(len(noise)), embeddings=embeddings)
        with torch.no_grad():
            x = ddim(self._denoiser(decoder_scale), noise.to(self.decoder.device), self._grid(ddim_steps), cond=cond).x
            return self.decoder.decode(x)

    def interpolate(self, image_a: Tensor, image_b: Tensor, steps: int = 8, *, noise: str = "slerp",
                    ddim_steps: int = 50, decoder_scale: float = 1.0) -> Tensor:
        """`steps` images (steps, C, H, W) from a to b: the slerp of their CLIP embeddings,
        decoded from their inverted noises (`noise`: slerp | a; see the module docstring)."""
        if not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps={steps!r} is not valid; valid: an integer >= 2 (the strip's two ends included)")
        if noise not in NOISE_PATHS:
            raise ValueError(f"noise={noise!r} is not valid; valid: {list(NOISE_PATHS)}")
        images = torch.cat([self._images(image_a), self._images(image_b)])
        if len(images) != 2:
            raise ValueError("interpolate takes one image a and one image b")
        z = self.embed(images)
        x_t = self.invert(images, z, ddim_steps=ddim_steps, decoder_scale=decoder_scale)
        thetas = torch.linspace(0, 1, steps).tolist()
        zs = torch.cat([slerp(z[:1], z[1:], th) for th in thetas])
        noises = torch.cat([slerp(x_t[:1], x_t[1:], th) if noise == "slerp" else x_t[:1] for th in thetas])
        return self.regenerate(noises, zs, ddim_steps=ddim_steps, decoder_scale=decoder_scale)

    def text_diff(self, image: Tensor, source_caption: str, target_caption: str,
                  amounts: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), *, ddim_steps: int = 50,
                  decoder_scale: float = 1.0) -> Tensor:
        """The image moved toward the caption change source -> target (sec. 3.3), one image
        per amount theta (len(amounts), C, H, W), all from the image's inverted noise."""
        for name, value in (("source_caption", source_caption), ("target_caption", target_caption)):
            if not isinstance(value, str):
                raise ValueError(f"{name}={value!r} is not valid; valid: a string")
        amounts = [float(a) for a in amounts]
        if not amounts or not all(0 <= a <= 1 for a in amounts):
            raise ValueError(f"amounts={amounts} are not valid; valid: one or more numbers in [0, 1]")
        x = self._images(image)
        if len(x) != 1:
            raise ValueError(f"text_diff edits one image; got {len(x)}")
        z_i = self.embed(x)
        z_t = self.clip.embed_text([source_caption, target_caption])
        diff = z_t[1:] - z_t[:1]
        if float(diff.norm()) < 1e-6:
            raise ValueError(f"the captions {source_caption!r} and {target_caption!r} have the same CLIP embedding; "
                             "there is no direction between them")
        z_d = F.normalize(diff, dim=1)
        x_t = self.invert(x, z_i, ddim_steps=ddim_steps, decoder_scale=decoder_scale)
        zs = torch.cat([slerp(z_i, z_d, a) for a in amounts])
        return self.regenerate(x_t.expand(len(amounts), *x_t.shape[1:]).contiguous(), zs, ddim_steps=ddim_steps,
                               decoder_scale=decoder_scale)


__all__ = ["NOISE_PATHS", "UnCLIP", "check_decoder", "same_weights", "slerp"]
