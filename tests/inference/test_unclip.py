"""unCLIP's pipeline (`inference/unclip.py`): slerp against its closed form, the same-CLIP
check, text to image with and without the prior, variations, interpolations and text diffs
decoded from exactly inverted noise, bad input, and `hirune unclip`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hirune.cli import main
from hirune.data import load_dataset
from networks import perturbed
from hirune.inference.unclip import UnCLIP, same_weights, slerp
from hirune.training import load, preset_config, train

CLIP = {"channels": 8, "embed_dim": 16, "text_dim": 32, "text_depth": 1}
UNET = {"channels": 16, "channel_mult": [1, 2], "attention_resolutions": [2], "head_channels": 16}


# --- slerp ----------------------------------------------------------------------------------

def check_slerp(fn) -> None:
    """slerp's closed form: the quarter circle between orthogonal unit vectors; for any unit
    pair the ends, unit norm, and the angle from a growing by equal steps theta omega."""
    e1, e2 = torch.eye(2, dtype=torch.float64)[:1], torch.eye(2, dtype=torch.float64)[1:]
    for th in (0.0, 0.3, 0.5, 1.0):
        torch.testing.assert_close(fn(e1, e2, th), torch.tensor([[math.cos(th * math.pi / 2),
                                                                  math.sin(th * math.pi / 2)]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(3, 16, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(3, 16, generator=g, dtype=torch.float64), dim=1)
    omega = torch.arccos((a * b).sum(1))
    torch.testing.assert_close(fn(a, b, 0.0), a)
    torch.testing.assert_close(fn(a, b, 1.0), b)
    thetas = torch.linspace(0, 1, 7, dtype=torch.float64)
    frames = torch.stack([fn(a, b, float(th)) for th in thetas])          # (7, 3, 16)
    torch.testing.assert_close(frames.norm(dim=-1), torch.ones(7, 3, dtype=torch.float64))
    angle_from_a = torch.arccos((frames * a).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(angle_from_a, thetas[:, None] * omega, atol=1e-6, rtol=0)
    steps = torch.arccos((frames[1:] * frames[:-1]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(steps, (omega / 6).expand(6, 3), atol=1e-6, rtol=0)


def test_slerp_is_its_closed_form_and_lerp_is_not():
    check_slerp(slerp)

    def lerp(a, b, th):
        return (1 - th) * a + th * b

    def normalised_lerp(a, b, th):  # unit norm, but the angle does not grow evenly
        return F.normalize(lerp(a, b, th), dim=1)

    for broken in (lerp, normalised_lerp):
        with pytest.raises(AssertionError):
            check_slerp(broken)


def test_slerp_of_images_and_of_nearly_equal_and_opposite_vectors():
    a = torch.randn(2, 1, 4, 4)
    b = 2 * torch.randn(2, 1, 4, 4)                      # rows of other norms: the norm moves along with the angle
    assert slerp(a, b, 0.5).shape == (2, 1, 4, 4)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    torch.testing.assert_close(slerp(a, a, 0.4), a)        # angle 0: the limit
    with pytest.raises(ValueError, match="opposite vectors"):
        slerp(a, -a, 0.5)
    with pytest.raises(ValueError, match="must match"):
        slerp(a, b[:1], 0.5)


# --- a CLIP run, a decoder and a stand-in prior ------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    for name, seed in (("clip", 0), ("other_clip", 1)):
        train(preset_config("clip-digits", {"model_config": CLIP, "batch_size": 32, "steps": 2, "ckpt_every": 2,
                                            "seed": seed, "out": str(root / name)}), progress=False)
    train(preset_config("vpred-digits", {"clip": str(root / "clip"), "model_config": UNET, "steps": 2,
                                         "sample_every": 0, "ckpt_every": 2, "sample_steps": 3,
                                         "out": str(root / "decoder")}), progress=False)
    return root



class StubPrior:
    """The prior's interface (`families.prior`): its CLIP run and generate_embeddings, here
    the text embedding turned by a fixed rotation (so it differs from use_prior=False)."""

    def __init__(self, clip, path="runs/stub-clip"):
        self.clip, self.config, self.calls = clip, type("C", (), {"clip": path})(), []

    def generate_embeddings(self, prompts, *, scale=1.0, best_of=None, sampler=None, steps=None, seed=0,
                            progress=True):
        self.calls.append({"prompts": prompts, "scale": scale, "best_of": best_of, "seed": seed})
        return self.clip.embed_text(prompts).roll(1, dims=1)


@pytest.fixture(scope="module")
def pipe(runs):
    decoder = perturbed(load(runs / "decoder"))
    return UnCLIP(StubPrior(load(runs / "clip")), decoder)


def _test_images(k: int = 2) -> torch.Tensor:
    return load_dataset("digits", "test").data[:k]


def _spy(pipe, monkeypatch) -> list:
    """The embeddings the decoder is asked to decode, call by call."""
    seen, generate = [], pipe.decoder.generate

    def spy(n, *args, embeddings=None, **kw):
        seen.append(embeddings)
        return generate(n, *args, embeddings=embeddings, **kw)

    monkeypatch.setattr(pipe.decoder, "generate", spy)
    return seen


# --- the pipeline ---------------------------------------------------------------------------

def test_text_to_image_decodes_the_prior_or_the_text_embedding(pipe, monkeypatch):
    seen = _spy(pipe, monkeypatch)
    prompts = ["a handwritten seven", "a handwritten one"]
    x = pipe.text_to_image(prompts, prior_scale=2.0, decoder_scale=3.0, best_of=2, steps=2, seed=5)
    assert x.shape == (2, 1, 8, 8) and x.isfinite().all()
    assert pipe.prior.calls[-1] == {"prompts": prompts, "scale": 2.0, "best_of": 2, "seed": 5}
    text = pipe.clip.embed_text(prompts)
    torch.testing.assert_close(seen[-1], text.roll(1, dims=1))         # the prior's embedding
    pipe.text_to_image(prompts, use_prior=False, steps=2)
    torch.testing.assert_close(seen[-1], text)                         # the ablation: CLIP's text embedding


def test_variations_decode_one_embedding_with_other_seeds(pipe, monkeypatch):
    seen = _spy(pipe, monkeypatch)
    x = _test_images(1)
    v = pipe.variations(x, n=3, steps=3)
    assert v.shape == (3, 1, 8, 8)
    torch.testing.assert_close(seen[-1], pipe.clip.embed_image(x).expand(3, -1))
    assert (v[0] - v[1]).abs().max() > 1e-3                            # each its own noise
    torch.testing.assert_close(pipe.variations(x[0], n=3, steps=3), v)  # (C, H, W) is one image; seeded


def test_interpolation_and_text_diffs_reconstruct_their_images_from_the_inverted_noise(pipe):
    a, b = _test_images(2)
    strip = pipe.interpolate(a, b, steps=4, ddim_steps=10)
    assert strip.shape == (4, 1, 8, 8)
    torch.testing.assert_close(strip[0], a, atol=1e-4, rtol=0)         # exact inversion: both ends come back
    torch.testing.assert_close(strip[-1], b, atol=1e-4, rtol=0)
    held = pipe.interpolate(a, b, steps=3, ddim_steps=10, noise="a")  # image a's noise throughout
    torch.testing.assert_close(held[0], a, atol=1e-4, rtol=0)
    assert (held[-1] - b).abs().max() > 1e-3
    diffs = pipe.text_diff(a, "a handwritten zero", "a thick handwritten zero", amounts=(0.0, 0.5, 1.0),
                           ddim_steps=10)
    assert diffs.shape == (3, 1, 8, 8)
    torch.testing.assert_close(diffs[0], a, atol=1e-4, rtol=0)          # theta = 0: the image itself
    assert (diffs[2] - a).abs().max() > 1e-2                           # z_d alone: another image


def test_text_diff_moves_along_the_slerp_toward_the_caption_direction(pipe, monkeypatch):
    seen = []
    regenerate = pipe.regenerate
    monkeypatch.setattr(pipe, "regenerate", lambda noise, z, **kw: seen.append(z) or regenerate(noise, z, **kw))
    x = _test_images(1)
    pipe.text_diff(x, "a handwritten zero", "a thin handwritten zero", amounts=(0.0, 0.5, 1.0), ddim_steps=10)
    z_i = pipe.clip.embed_image(x)
    t = pipe.clip.embed_text(["a handwritten zero", "a thin handwritten zero"])
    z_d = F.normalize(t[1:] - t[:1], dim=1)
    torch.testing.assert_close(seen[0], torch.cat([z_i, slerp(z_i, z_d, 0.5), z_d]))


def test_a_prior_and_a_decoder_of_other_clips_are_refused(runs, pipe):
    other = load(runs / "other_clip")
    with pytest.raises(ValueError, match=r"clip=runs/other .* clip=.*/clip, whose weights differ"):
        UnCLIP(StubPrior(other, "runs/other"), pipe.decoder)
    assert not same_weights(other.model, pipe.clip.model)
    assert same_weights(load(runs / "clip").model, pipe.clip.model)   # the same run loaded twice is accepted
    UnCLIP(StubPrior(load(runs / "clip")), pipe.decoder)


def test_bad_input_is_named(runs, pipe):
    x = _test_images(2)
    with pytest.raises(ValueError, match="the decoder must be an unCLIP decoder run"):
        UnCLIP(None, load(runs / "clip"))
    with pytest.raises(ValueError, match="the prior must be an unCLIP prior run .* not a diffusion run"):
        UnCLIP(pipe.decoder, pipe.decoder)
    with pytest.raises(ValueError, match="use_prior=True needs a prior run"):
        UnCLIP(None, pipe.decoder).text_to_image(["a seven"])
    with pytest.raises(ValueError, match="prompts must be a list of strings"):
        pipe.text_to_image("a seven")
    with pytest.raises(ValueError, match=r"images of shape \(1, 28, 28\) are not valid; valid: \(1, 8, 8\)"):
        pipe.variations(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError, match="variations are of one image"):
        pipe.variations(x)
    with pytest.raises(ValueError, match="n=0 is not valid"):
        pipe.variations(x[0], n=0)
    with pytest.raises(ValueError, match="steps=1 is not valid; valid: an integer >= 2"):
        pipe.interpolate(x[0], x[1], steps=1)
    with pytest.raises(ValueError, match=r"noise='b' is not valid; valid: \['slerp', 'a'\]"):
        pipe.interpolate(x[0], x[1], noise="b")
    with pytest.raises(ValueError, match=r"amounts=\[1.5\] are not valid"):
        pipe.text_diff(x[0], "a zero", "a one", amounts=(1.5,))
    with pytest.raises(ValueError, match="have the same CLIP embedding"):
        pipe.text_diff(x[0], "a zero", "a zero")


def test_hirune_unclip_writes_pngs_and_names_bad_input(runs, tmp_path, capsys):
    decoder = str(runs / "decoder")
    for mode, args in (("variations", ["--image-index", "3", "--n", "2", "--steps", "2"]),
                       ("interpolate", ["--pair", "0", "5", "--frames", "3", "--ddim-steps", "3"]),
                       ("diff", ["--index", "1", "--from", "a one", "--to", "a thick one", "--ddim-steps", "3",
                                 "--amounts", "0", "1"])):
        out = tmp_path / f"{mode}.png"
        assert main(["unclip", mode, decoder, *args, "--out", str(out)]) == 0 and out.is_file()
    assert main(["unclip", "variations", decoder, "--image-index", "999", "--out", str(tmp_path / "x.png")]) == 2
    assert "index must be 0..299" in capsys.readouterr().err
    assert main(["unclip", "text", str(runs / "decoder"), decoder, "--prompt", "a seven",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "the prior must be an unCLIP prior run" in capsys.readouterr().err
