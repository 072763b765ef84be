"""hirune.nn.conv: the cheaper forms compute the plain ones' function and gradients, in
float64 to rounding: nearest 2x upsampling + 3x3 conv as one transposed conv, a 1x1 conv as
a batched matrix multiply; the plain form wherever the cheap one does not hold (sizes that
are not 2x, other convolutions, channels-last input).  Broken variants of the 4-tap kernel
are shown to fail the same check.  The UNet with the cheap forms is the UNet with the plain
ones (same state dict, same outputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hirune.models.unet import UNet, UNetConfig
from hirune.nn import Conv1x1, upsample_conv
from hirune.nn import conv as conv_module
from hirune.nn.conv import upsample_then_conv as plain_upsample_conv


def value_and_grads(fn, x, conv):
    """fn(x, conv), then the gradients of a fixed random functional of it wrt x and conv's
    parameters."""
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    out = fn(x, conv)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (out * weight).sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in conv.parameters())]


def max_error(fn, x, conv, reference=plain_upsample_conv):
    got, want = value_and_grads(fn, x, conv), value_and_grads(reference, x, conv)
    return max((g - w).abs().max().item() for g, w in zip(got, want))


@pytest.mark.parametrize("shape, c_out, bias", [((2, 3, 5, 5), 4, True), ((3, 8, 4, 7), 8, False),
                                                ((1, 1, 1, 1), 2, True), ((2, 5, 6, 2), 1, True)])
def test_upsample_conv_is_upsampling_then_conv(shape, c_out, bias):
    conv = nn.Conv2d(shape[1], c_out, 3, padding=1, bias=bias).double()
    x = torch.randn(shape, dtype=torch.float64)
    out = upsample_conv(x, conv)
    assert out.shape == (shape[0], c_out, 2 * shape[2], 2 * shape[3])
    assert max_error(upsample_conv, x, conv) < 1e-12
    # the size given explicitly (the UNet passes the skip's), when it is 2x
    assert max_error(lambda x, c: upsample_conv(x, c, torch.Size((2 * shape[2], 2 * shape[3]))), x, conv) < 1e-12


@pytest.mark.parametrize("taps", [
    lambda left, middle, right: [left, middle + left, right + middle, right],    # the kernel flipped
    lambda left, middle, right: [right, middle, middle, left],                    # taps not summed
    lambda left, middle, right: [right, middle + right, left + middle, 0 * left],  # a tap dropped
])
def test_a_broken_kernel_fails_the_same_check(monkeypatch, taps):
    def broken(w, dim):
        return torch.stack(taps(*w.unbind(dim)), dim)

    monkeypatch.setattr(conv_module, "_phases", broken)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    assert max_error(upsample_conv, torch.randn(2, 3, 5, 6, dtype=torch.float64), conv) > 1e-3


def test_upsample_conv_keeps_the_plain_form_where_the_cheap_one_does_not_hold():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    odd = upsample_conv(x, conv, torch.Size((7, 7)))  # an odd skip: 4 -> 7, not 2x
    assert odd.shape[-2:] == (7, 7)
    assert torch.equal(odd, plain_upsample_conv(x, conv, torch.Size((7, 7))))
    for other in (nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                  nn.Conv2d(3, 4, 3, padding=1, dilation=1, groups=1, stride=2),
                  nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))):  # a wrapped conv (a LoRA layer, say)
        other = other.double()
        assert torch.equal(upsample_conv(x, other), plain_upsample_conv(x, other))


@pytest.mark.parametrize("bias", [True, False])
def test_conv1x1_is_the_1x1_convolution(bias):
    layer = Conv1x1(6, 3, 1, bias=bias).double()
    plain = nn.Conv2d(6, 3, 1, bias=bias).double()
    assert {k: v.shape for k, v in layer.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(4, 6, 5, 3, dtype=torch.float64)
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):  # channels-last: the convolution itself
        got = value_and_grads(lambda x, c: c(x), inp, layer)
        want = value_and_grads(lambda x, c: c(x), inp, plain)
        assert max((g - w).abs().max().item() for g, w in zip(got, want)) < 1e-12


def test_conv1x1_built_as_another_convolution_is_that_convolution():
    """peft builds an adapter's layers with the base layer's class and its arguments."""
    layer = Conv1x1(4, 2, kernel_size=3, padding=1, bias=False).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    assert torch.equal(layer(x), F.conv2d(x, layer.weight, None, padding=1))


def test_the_unet_computes_the_plain_forms_function(monkeypatch):
    """28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28 (a 2x upsampling and an odd one) with 1x1 skips."""
    config = UNetConfig(in_channels=1, channels=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                        attention_resolutions=(4,), head_channels=8)
    net = UNet(config).double()
    for p in net.parameters():  # the zero-initialised layers too, so every path counts
        nn.init.normal_(p, std=0.2)
    assert any(isinstance(m, Conv1x1) for m in net.modules())
    x, t = torch.randn(2, 1, 28, 28, dtype=torch.float64), torch.tensor([3.0, 700.0], dtype=torch.float64)
    cheap = net(x, t)
    monkeypatch.setattr("hirune.models.unet.upsample_conv", plain_upsample_conv)
    monkeypatch.setattr(Conv1x1, "forward", nn.Conv2d.forward)
    assert (cheap - net(x, t)).abs().max().item() < 1e-10
