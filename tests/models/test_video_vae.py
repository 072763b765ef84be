"""CogVideoX's 3D causal VAE (`models/video_vae.py`): causality bit for bit (and the
non-causal variants it rejects: symmetric time padding, CogVideoX's clip-wide GroupNorm),
the one-frame video (an image) encoded alone, the closed form of a causal conv on one
frame, shapes and refused shapes, diffusers' CogVideoX layers as oracles, the latent
statistics of video latents, and a short `hirune train` of the autoencoder family on
videos (checkpoint, light load, encode / decode, evaluation, preview)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optional import lazy, needs
from hirune.models import build_model
from hirune.models.video_vae import (CausalConv3d, Downsample3d, FrameGroupNorm, Upsample3d, VideoKLConfig,
                                     pool_time, repeat_time)
from hirune.objectives.autoencoder import latent_statistics

diffusers = lazy("diffusers")
pytestmark = needs("diffusers")


def tiny(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return build_model("video_kl", {"in_channels": 1, "mid_attention": True, **overrides}).eval()


def randomized(model: nn.Module) -> nn.Module:
    """Every parameter redrawn (the zero-initialised attention output too), so that every
    path carries signal."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


def unchanged(fn, x: torch.Tensor, k: int, dim: int = 2) -> list[bool]:
    """For each output frame of fn(x) (along `dim`): is it bit for bit the same when input
    frame k is redrawn?"""
    x2 = x.clone()
    x2.select(dim, k).copy_(torch.randn_like(x2.select(dim, k)) + 3.0)
    with torch.no_grad():
        a, b = fn(x), fn(x2)
    return [torch.equal(a.select(dim, t), b.select(dim, t)) for t in range(a.shape[dim])]


class SymmetricConv3d(CausalConv3d):
    """The broken variant: (kt - 1) / 2 frames of padding before and after (a centred,
    non-causal conv)."""

    def forward(self, x):
        p = self.time_pad // 2
        x = torch.cat([x[:, :, :1].expand(-1, -1, p, -1, -1), x, x[:, :, -1:].expand(-1, -1, p, -1, -1)], 2)
        return self.conv(x)


# --- the causal convolution ---------------------------------------------------------------

def _dense(conv):
    """Every time tap random (the layer starts inflated: past taps 0, which would hide what these tests look for)."""
    torch.nn.init.normal_(conv.conv.weight, std=0.2)
    return conv


def test_causal_conv_starts_as_the_2d_conv_on_each_frame():
    """Inflated start: on a clip, each output frame is the 2-D conv (the kernel summed over time) of its own frame."""
    torch.manual_seed(0)
    conv, x = CausalConv3d(2, 3, (3, 3, 3)), torch.randn(2, 2, 5, 6, 6)
    w, b = conv.conv.weight, conv.conv.bias
    assert (w[:, :, :-1] == 0).all()
    for t in range(5):
        torch.testing.assert_close(conv(x)[:, :, t], F.conv2d(x[:, :, t], w.sum(2), b, padding=1), atol=1e-6, rtol=0)
    dense = _dense(CausalConv3d(2, 3, (3, 3, 3)))  # the check can fail: a dense kernel mixes the past in
    assert (dense(x)[:, :, 2] - F.conv2d(x[:, :, 2], dense.conv.weight.sum(2), dense.conv.bias, padding=1)).abs().max() > 1e-2


def test_causal_conv_output_frame_t_sees_input_frames_up_to_t_only():
    torch.manual_seed(0)
    conv, x = _dense(CausalConv3d(2, 3, (3, 3, 3))), torch.randn(2, 2, 7, 6, 6)
    for k in range(7):
        assert unchanged(conv, x, k) == [not k <= t <= k + 2 for t in range(7)]   # changed: frames k .. k + kt - 1
    broken = _dense(SymmetricConv3d(2, 3, (3, 3, 3)))
    assert unchanged(broken, x, 3) == [True, True, False, False, False, True, True]  # frame 2 sees frame 3: caught


def test_causal_conv_on_one_frame_is_the_2d_conv_of_the_kernel_summed_over_time():
    torch.manual_seed(0)
    for kernel in [(3, 3, 3), (2, 3, 3), (4, 1, 1), (3, 5, 3)]:
        conv, x = _dense(CausalConv3d(3, 5, kernel)), torch.randn(2, 3, 1, 8, 9)
        w, b = conv.conv.weight, conv.conv.bias
        closed = F.conv2d(x[:, :, 0], w.sum(2), b, padding=(kernel[1] // 2, kernel[2] // 2))
        torch.testing.assert_close(conv(x)[:, :, 0], closed, atol=1e-5, rtol=0)

    class ZeroPadded(CausalConv3d):  # the broken variant: zeros in the past instead of the first frame
        def forward(self, x):
            return self.conv(F.pad(x, (0, 0, 0, 0, self.time_pad, 0)))

    broken, x = _dense(ZeroPadded(3, 5, 3)), torch.randn(2, 3, 1, 8, 8)
    closed = F.conv2d(x[:, :, 0], broken.conv.weight.sum(2), broken.conv.bias, padding=1)
    assert (broken(x)[:, :, 0] - closed).abs().max() > 1e-2


def test_causal_conv_refuses_even_spatial_kernels():
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 2, 3\) is not valid; valid: .*kh, kw odd"):
        CausalConv3d(1, 1, (3, 2, 3))


# --- time pooling and repetition -----------------------------------------------------------

def test_pool_time_keeps_the_first_frame_alone_and_averages_pairs():
    x = torch.arange(9.0).reshape(1, 1, 9, 1, 1)
    assert pool_time(x).flatten().tolist() == [0.0, 1.5, 3.5, 5.5, 7.5]
    assert repeat_time(pool_time(x)).flatten().tolist() == [0.0, 1.5, 1.5, 3.5, 3.5, 5.5, 5.5, 7.5, 7.5]
    assert pool_time(x[:, :, :1]).shape[2] == repeat_time(x[:, :, :1]).shape[2] == 1   # an image stays one frame
    with pytest.raises(ValueError, match=r"frames=8 is not valid for pool_time; valid: 1 \+ 2m"):
        pool_time(x[:, :, :8])


# --- the whole model: causality and the one-frame video ------------------------------------

def reconstruct(model):
    return lambda x: model.decode(model.encode(x).mean)


def test_changing_frame_k_leaves_every_latent_and_frame_that_does_not_cover_it_bitwise():
    """Latent j covers frames 0 .. 4j; decoded frame i reads latents 0 .. ceil(i / 4)."""
    model, x = randomized(tiny()), torch.randn(2, 1, 9, 8, 8)
    mean = lambda v: model.encode(v).mean
    for k in range(1, 9):
        assert unchanged(mean, x, k) == [4 * j < k for j in range(3)], k
        assert unchanged(reconstruct(model), x, k) == [4 * -(-i // 4) < k for i in range(9)], k
    z = torch.randn(2, 4, 3, 2, 2)
    for j in range(3):
        assert unchanged(model.decode, z, j) == [-(-i // 4) < j for i in range(9)], j


@pytest.mark.parametrize("broken", ["symmetric_padding", "clip_groupnorm"])
def test_causality_harness_rejects_non_causal_variants(broken, monkeypatch):
    """Symmetric time padding, and CogVideoX's GroupNorm over (C / G, T, H, W), both let a
    latent see later frames."""
    if broken == "symmetric_padding":
        monkeypatch.setattr(CausalConv3d, "forward", SymmetricConv3d.forward)
    else:
        monkeypatch.setattr(FrameGroupNorm, "forward", nn.GroupNorm.forward)
    model, x = randomized(tiny()), torch.randn(2, 1, 9, 8, 8)
    assert unchanged(lambda v: model.encode(v).mean, x, 5) != [True, True, False]
    assert not torch.equal(model.encode(x).mean[:, :, :1], model.encode(x[:, :, :1]).mean)


def test_a_one_frame_video_is_encoded_and_decoded_alone_and_an_image_is_one():
    model, x = randomized(tiny()), torch.randn(2, 1, 9, 16, 16)
    with torch.no_grad():
        q, q1, image = model.encode(x), model.encode(x[:, :, :1]), model.encode(x[:, :, 0])
        assert torch.equal(q.mean[:, :, :1], q1.mean) and torch.equal(q.logvar[:, :, :1], q1.logvar)
        assert image.mean.shape == (2, 4, 4, 4) and torch.equal(image.mean, q1.mean[:, :, 0])
        z = q.mean
        assert torch.equal(model.decode(z)[:, :, :1], model.decode(z[:, :, :1]))
        assert torch.equal(model.decode(z[:, :, 0]), model.decode(z[:, :, :1])[:, :, 0])   # 4-D latent -> image
        assert model(x[:, :, 0], sample=False).reconstruction.shape == (2, 1, 16, 16)


# --- shapes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("size, frames, side, latent", [
    ("tiny", 1, 32, (1, 8, 8)), ("tiny", 5, 32, (2, 8, 8)), ("tiny", 9, 32, (3, 8, 8)), ("tiny", 13, 16, (4, 4, 4)),
    ("f8", 9, 32, (3, 4, 4)), ("f8", 5, 16, (2, 2, 2))])
def test_4k_plus_1_frames_give_k_plus_1_latent_frames(size, frames, side, latent):
    model = build_model("video_kl", size=size, in_channels=1, z_channels=3)
    x = torch.randn(1, 1, frames, side, side)
    with torch.no_grad():
        out = model(x)
    assert out.latent.shape == (1, 3, *latent) == (1, *model.latent_shape(x.shape[1:]))
    assert out.reconstruction.shape == x.shape and out.posterior.kl().shape == (1,)


def test_time_compression_is_a_setting():
    for tc, frames, latent in [(1, 4, 4), (2, 7, 4), (4, 9, 3)]:
        model = build_model("video_kl", in_channels=1, time_compression=tc)
        with torch.no_grad():
            assert model.encode(torch.randn(1, 1, frames, 8, 8)).mean.shape[2] == latent


@pytest.mark.parametrize("shape, match", [
    ((1, 1, 8, 32, 32), r"frames=8 is not valid; valid: 4k \+ 1 frames for time_compression=4, e.g. \[1, 5, 9, 13\]"),
    ((1, 1, 9, 30, 32), r"height=30 is not valid; valid: multiples of the spatial factor f=4, e.g. \[28, 32\]"),
    ((1, 1, 9, 32, 6), r"width=6 is not valid; valid: multiples of the spatial factor f=4, e.g. \[4, 8\]"),
    ((1, 3, 9, 32, 32), r"input shape=\(1, 3, 9, 32, 32\) is not valid; valid: \(B, 1, T, H, W\) videos or "
                        r"\(B, 1, H, W\) images"),
    ((9, 32, 32), r"input shape=\(9, 32, 32\) is not valid")])
def test_bad_shapes_are_refused_naming_the_valid_ones(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny().encode(torch.randn(shape))


@pytest.mark.parametrize("config, match", [
    ({"time_compression": 8}, r"time_compression=8 is not valid; valid: \[1, 2, 4\]"),
    ({"time_compression": 3}, r"time_compression=3 is not valid"),
    ({"frames": 8}, r"frames=8 is not valid; valid: 4k \+ 1 frames"),
    ({"image_size": 30}, r"image size 30 is not divisible"),
    ({"disc_weight": 0.5}, r"disc_weight=0.5 is not valid; valid: 0"),
    ({"perceptual_weight": 1.0}, r"perceptual_weight=1.0 is not valid; valid: 0")])
def test_bad_configs_are_refused(config, match):
    with pytest.raises(ValueError, match=match):
        VideoKLConfig(in_channels=1, **config)


def test_named_sizes_and_decode_refuses_bad_latents():
    cog = build_model("video_kl", size="cogvideox", in_channels=3)
    # AutoencoderKLCogVideoX's 215 583 907 parameters less its decoder's SpatialNorm3D convs (423 936) and
    # plus the plain GroupNorms that replace them (23 552)
    assert sum(p.numel() for p in cog.parameters()) == 215_583_907 - 423_936 + 23_552
    with pytest.raises(ValueError, match=r"latent shape=\(1, 3, 2, 2\) is not valid; valid: \(B, 4, T, h, w\)"):
        tiny().decode(torch.randn(1, 3, 2, 2))


# --- diffusers' CogVideoX as the oracle ---------------------------------------------------

def test_causal_conv_matches_diffusers():
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXCausalConv3d

    torch.manual_seed(0)
    for kernel in [3, (2, 3, 3), (3, 1, 1)]:
        ours = CausalConv3d(4, 6, kernel)
        theirs = CogVideoXCausalConv3d(4, 6, kernel)
        theirs.load_state_dict(ours.state_dict())
        x = torch.randn(2, 4, 9, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x)[0], atol=1e-6, rtol=0)


def test_time_down_and_upsampling_match_diffusers():
    from diffusers.models.downsampling import CogVideoXDownsample3D
    from diffusers.models.upsampling import CogVideoXUpsample3D

    torch.manual_seed(0)
    for compress in (True, False):
        ours, theirs = Downsample3d(4, compress), CogVideoXDownsample3D(4, 4, compress_time=compress)
        theirs.load_state_dict(ours.state_dict())
        up, up_theirs = Upsample3d(4, compress), CogVideoXUpsample3D(4, 4, compress_time=compress)
        up_theirs.load_state_dict(up.state_dict())
        with torch.no_grad():
            for frames in (1, 5, 9):
                x = torch.randn(2, 4, frames, 8, 8)
                torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)
            for frames in (1, 3, 5):   # diffusers doubles every frame of an even count; odd ones match
                x = torch.randn(2, 4, frames, 4, 4)
                torch.testing.assert_close(up(x), up_theirs(x), atol=1e-6, rtol=0)


def diffusers_encoder_state(ours: nn.Module, n_res: int) -> dict:
    out = {}
    for k, v in ours.state_dict().items():
        k = re.sub(rf"^down\.(\d+)\.{n_res}\.", r"down_blocks.\1.downsamplers.0.", k)
        k = re.sub(r"^down\.(\d+)\.(\d+)\.", r"down_blocks.\1.resnets.\2.", k)
        k = re.sub(r"^mid\.(\d+)\.", r"mid_block.resnets.\1.", k)
        k = re.sub(r"^out\.0\.", "norm_out.", re.sub(r"^out\.2\.", "conv_out.", k)).replace(".skip.", ".conv_shortcut.")
        out[k] = v
    return out


def diffusers_decoder_state(ours: nn.Module, n_res: int) -> dict:
    """Our decoder's weights in CogVideoXDecoder3D's layout: each of its SpatialNorm3D
    norm(f) * conv_y(z) + conv_b(z) made our GroupNorm by a plain norm and 1x1 convs of zero
    weight whose biases are our norm's scale and shift."""
    out = {}
    for k, v in ours.state_dict().items():
        k = re.sub(rf"^up\.(\d+)\.{n_res + 1}\.", r"up_blocks.\1.upsamplers.0.", k)
        k = re.sub(r"^up\.(\d+)\.(\d+)\.", r"up_blocks.\1.resnets.\2.", k)
        k = re.sub(r"^mid\.(\d+)\.", r"mid_block.resnets.\1.", k)
        k = re.sub(r"^out\.0\.", "norm_out.", re.sub(r"^out\.2\.", "conv_out.", k)).replace(".skip.", ".conv_shortcut.")
        norm = re.match(r"(.*(?:norm1|norm2|norm_out))\.(weight|bias)$", k)
        if norm:
            name, conv = norm.group(1), "conv_y" if norm.group(2) == "weight" else "conv_b"
            out[f"{name}.norm_layer.{norm.group(2)}"] = torch.ones_like(v) if conv == "conv_y" else torch.zeros_like(v)
            out[f"{name}.{conv}.conv.bias"] = v
            out[f"{name}.{conv}.conv.weight"] = torch.zeros(len(v), ours.conv_in.conv.in_channels, 1, 1, 1)
        else:
            out[k] = v
    return out


def test_encoder_and_decoder_on_one_frame_match_diffusers_cogvideox():
    """On a one-frame video per-frame and clip-wide GroupNorm agree, so there the whole
    encoder and decoder must be CogVideoX's, weight for weight (diffusers' layout, 32 and
    64 channels, one ResNet block per level, 4x time over 4x space)."""
    from diffusers.models.autoencoders.autoencoder_kl_cogvideox import CogVideoXDecoder3D, CogVideoXEncoder3D

    model = randomized(tiny(channels=32, mid_attention=False))
    kw = dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32, temporal_compression_ratio=4)
    enc = CogVideoXEncoder3D(in_channels=1, out_channels=4, down_block_types=("CogVideoXDownBlock3D",) * 3, **kw)
    dec = CogVideoXDecoder3D(in_channels=4, out_channels=1, up_block_types=("CogVideoXUpBlock3D",) * 3, **kw)
    enc.load_state_dict(diffusers_encoder_state(model.encoder, 1))
    dec.load_state_dict(diffusers_decoder_state(model.decoder, 1))
    x = torch.randn(2, 1, 1, 16, 16)
    with torch.no_grad():
        moments = enc(x)[0]
        torch.testing.assert_close(model.encoder(x), moments, atol=1e-5, rtol=1e-5)
        z = moments[:, :4]
        torch.testing.assert_close(model.decoder(z), dec(z)[0], atol=1e-5, rtol=1e-5)


# --- latent statistics ------------------------------------------------------------------

def test_latent_statistics_are_per_channel_over_frames_and_positions():
    model = tiny()
    videos = torch.randn(6, 1, 5, 8, 8)
    stats = latent_statistics(model, videos, num_images=6, seed=0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(6, generator=g)
    with torch.no_grad():
        z = model.encode(videos[idx]).sample(generator=torch.Generator().manual_seed(0)).double()
    assert stats["latent_shape"] == [4, 2, 2, 2] and len(stats["channel_mean"]) == 4
    torch.testing.assert_close(torch.tensor(stats["channel_mean"], dtype=torch.float64),
                               z.transpose(0, 1).flatten(1).mean(1))
    torch.testing.assert_close(torch.tensor(stats["channel_std"], dtype=torch.float64),
                               z.transpose(0, 1).flatten(1).std(1))
    assert stats["scale_factor"] == pytest.approx(1.0 / float(z.std()))


# --- the autoencoder family on video data ---------------------------------------------------

def moving_squares(split: str = "train") -> "ArrayDataset":
    """Clips (N, 1, 5, 16, 16) in [-1, 1] of a 4 x 4 square moving one pixel a frame:
    a stand-in, local to these tests, for the registered video set."""
    from hirune.data import ArrayDataset

    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    n = 24 if split == "train" else 8
    clips = -torch.ones(n, 1, 5, 16, 16)
    start = torch.randint(4, 8, (n, 2), generator=g)
    step = torch.randint(-1, 2, (n, 2), generator=g)
    for i in range(n):
        for t in range(5):
            r, c = (start[i] + t * step[i]).tolist()
            clips[i, 0, t, r:r + 4, c:c + 4] = 1.0
    return ArrayDataset(name="moving-squares", kind="video", data=clips, labels=None, num_classes=0, split=split,
                        source="tests/models/test_video_vae.py")


@pytest.fixture
def squares(monkeypatch):
    from hirune.data.registry import DATASETS, DatasetSpec

    spec = DatasetSpec("moving-squares", "video", "a square moving in 5 frames", (1, 5, 16, 16), 0, 24, 8,
                       "tests/models/test_video_vae.py", lambda split="train", **_: moving_squares(split))
    monkeypatch.setitem(DATASETS, "moving-squares", spec)
    return spec


def test_the_kl_term_is_per_pixel_of_the_clip():
    from hirune.objectives.autoencoder import autoencoder_loss

    model, x = tiny(kl_weight=0.5), torch.rand(2, 1, 5, 8, 8) * 2 - 1
    noise = torch.randn(2, 4, 2, 2, 2)
    out = autoencoder_loss(model, x, model.config, noise=noise)
    with torch.no_grad():
        q = model.encode(x)
        rec = (model.decode(q.sample(noise)) - x).abs().flatten(1).mean(1)
    torch.testing.assert_close(out.per_sample, rec + 0.5 * q.kl() / (1 * 5 * 8 * 8))


def test_hirune_train_of_the_video_vae_then_load_encode_decode_and_eval(tmp_path, squares, capsys):
    """`hirune train` of the autoencoder family with model=video_kl on video data (3 steps),
    then the light loader's run: the same reconstructions as the trainer's EMA weights, the
    latent statistics per channel, latent diffusion's FirstStage round trip, the preview frame
    strip and `hirune eval` with the PSNR per frame."""
    import json

    from PIL import Image

    from hirune.cli import main
    from hirune.families.latent import FirstStage
    from hirune.training.loading import load

    out = tmp_path / "vae"
    assert main(["train", "kl-ae-digits", "model=video_kl", "dataset=moving-squares", "steps=3", "batch_size=4",
                 "warmup=1", "log_every=1", "ckpt_every=3", "sample_every=3", "num_samples=32",
                 'model_config={"kl_weight": 0.001}', f"out={out}"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 3 and record["kl"] > 0 and record["reconstruction"] > 0
    run = load(out)
    assert run.cfg.model == "video_kl" and run.data.kind == "video" and run.model.config.frames == 5
    stats = run.latent_stats
    assert stats["latent_shape"] == [4, 2, 4, 4] and len(stats["channel_mean"]) == len(stats["channel_std"]) == 4
    x = moving_squares("test").data
    with torch.no_grad():
        recon = run.model(x, sample=False).reconstruction
        assert recon.shape == x.shape
        q = run.model.encode(x)
        assert torch.equal(run.model.decode(q.mode()), recon)
    first = FirstStage(run)
    assert first.latent_shape((1, 5, 16, 16)) == (4, 2, 4, 4)
    assert first.moments(x).shape == (8, 8, 2, 4, 4)
    z = first.encode(x, generator=torch.Generator().manual_seed(0))
    assert z.shape == (8, 4, 2, 4, 4) and first.decode(z).shape == x.shape
    torch.testing.assert_close(first.decode(first.encode(x)), recon.clamp(-1, 1), atol=1e-5, rtol=1e-5)
    preview = Image.open(out / "samples" / "step_00000003.png")
    assert preview.size == (2 + 5 * 18, 2 + 2 * 2 * 18)   # 5 frames a row; 2 clips, each original over recon
    capsys.readouterr()
    assert main(["eval", str(out), "--n", "4"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["examples"] == 4 and len(metrics["psnr_db_per_frame"]) == 5
    assert metrics["latent_shape"] == [4, 2, 4, 4] and metrics["time_compression"] == 4


def test_image_autoencoders_refuse_video_data(tmp_path, squares):
    from hirune.training.presets import preset_config
    from hirune.training.trainer import Trainer

    with pytest.raises(ValueError, match="an autoencoder needs images; moving-squares holds video data"):
        Trainer(preset_config("kl-ae-digits", {"dataset": "moving-squares", "out": str(tmp_path / "r")}))
