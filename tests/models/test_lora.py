"""LoRA on hirune networks (models/lora.py): the zero start, the update against the formula
computed by hand from the peft layer's tensors (and a broken variant that misses the scale),
merge / unmerge, disabling, several named adapters with weights, the layers each target set
chooses, the refusals, and peft's file layout read back by peft itself."""

from __future__ import annotations

import copy
import json
import sys

import pytest

import torch
import torch.nn.functional as F
from networks import perturb_zero_init, small, unet
from torch import nn

from optional import needs
from hirune.models import lora
from hirune.nn.conv import upsample_then_conv

pytestmark = needs("peft")


def _inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, 8, 8, generator=g), torch.tensor([3.0, 400.0, 900.0][:batch])


def _randomize_adapters(model: nn.Module, std: float = 0.2) -> None:
    """Give every lora_B (zero at init) random values, so the adapters change the output."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(autouse=True)
def _plain_upsampling(monkeypatch):
    """A conv wrapped by an adapter runs the plain upsample-then-conv, which rounds differently
    from the transposed-conv form of the bare UNet (hirune.nn.conv, tested there); these
    tests compare peft's arithmetic bitwise, so the UNet runs the plain form throughout."""
    monkeypatch.setattr("hirune.models.unet.upsample_conv", upsample_then_conv)


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return {"unet": perturb_zero_init(unet()), "dit": perturb_zero_init(small("dit")),
            "uvit": perturb_zero_init(small("uvit"))}


# --- the zero start and the formula ------------------------------------------------------
@pytest.mark.parametrize("kind", ["unet", "dit", "uvit"])
@pytest.mark.parametrize("targets", ["attention", "all"])
def test_zero_init_leaves_the_output_unchanged_bitwise(nets, kind, targets):
    net = nets[kind]
    x, t = _inputs()
    with torch.no_grad():
        before = net(x, t)
    names = lora.add_lora(net, rank=2, alpha=7.0, targets=targets)
    assert names and all(n in lora.layers(net) for n in names)
    with torch.no_grad():
        assert torch.equal(net(x, t), before)
    assert all(not p.any() for n, p in net.named_parameters() if ".lora_B." in n)


def _hand_linear(layer, x, adapters):
    """W x + b + sum over (name, weight) of weight (alpha / r) B A x, from the layer's tensors."""
    base = layer.base_layer
    y = F.linear(x, base.weight, base.bias)
    for name, w in adapters:
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        y = y + w * (layer.lora_alpha[name] / layer.r[name]) * (x @ A.T @ B.T)
    return y


def _hand_conv(layer, x, adapters):
    base = layer.base_layer
    y = F.conv2d(x, base.weight, base.bias, base.stride, base.padding)
    for name, w in adapters:
        A, B = layer.lora_A[name].weight, layer.lora_B[name].weight
        y = y + w * (layer.lora_alpha[name] / layer.r[name]) * F.conv2d(
            F.conv2d(x, A, None, base.stride, base.padding), B)
    return y


def test_the_update_is_w_x_plus_alpha_over_r_b_a_x_and_a_missing_scale_is_caught(nets):
    net = nets["dit"]
    lora.add_lora(net, rank=2, alpha=8.0, targets="attention")   # scale 4
    _randomize_adapters(net)
    layer = net.blocks[0].attn.q
    x = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, want = layer(x), _hand_linear(layer, x, [("default", 1.0)])
        assert (got - want).abs().max() < 1e-5
        # the broken variant: the update without its scale alpha / r
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        broken = F.linear(x, layer.base_layer.weight, layer.base_layer.bias) + x @ A.T @ B.T
        assert (got - broken).abs().max() > 1e-2


def test_the_convolution_update_by_hand(nets):
    net = nets["unet"]
    lora.add_lora(net, rank=3, alpha=6.0, targets=r"down\.0\.0\.conv1")
    _randomize_adapters(net)
    layer = net.down[0][0].conv1
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (layer(x) - _hand_conv(layer, x, [("default", 1.0)])).abs().max() < 1e-5


def test_two_named_adapters_with_weights_equal_the_hand_formula(nets):
    net = nets["dit"]
    lora.add_lora(net, rank=2, alpha=4.0, targets="attention", name="a")
    lora.add_lora(net, rank=4, alpha=1.0, targets="q", name="b")
    assert lora.adapter_names(net) == ["a", "b"]
    _randomize_adapters(net)
    lora.set_weights(net, {"a": 0.7, "b": -1.5})
    x = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        q, k = net.blocks[1].attn.q, net.blocks[1].attn.k
        assert (q(x) - _hand_linear(q, x, [("a", 0.7), ("b", -1.5)])).abs().max() < 1e-5
        assert (k(x) - _hand_linear(k, x, [("a", 0.7)])).abs().max() < 1e-5   # b is not on k
        lora.set_weights(net, {"b": 1.0})    # b alone at weight 1
        assert (q(x) - _hand_linear(q, x, [("b", 1.0)])).abs().max() < 1e-5
        assert torch.equal(k(x), F.linear(x, k.base_layer.weight, k.base_layer.bias))
    with pytest.raises(ValueError, match="no adapter 'c'.*'a', 'b'"):
        lora.set_weights(net, {"c": 1.0})


# --- merge, unmerge, disable --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_merged_and_unmerged_outputs_agree(nets, kind):
    """To 1e-6 in float64; in float32 within the network's own rounding (W x + s B A x and
    (W + s B A) x round differently): by the triangle inequality through the float64 outputs,
    |merged32 - unmerged32| <= the rounding of each path (its float32 against its float64
    output) + their float64 difference.  The roundings are about 1e-5 on these networks (they
    depend on the threads' summation order), against 1e-2 for the adapters' effect."""
    x, t = _inputs()
    net = nets[kind]
    lora.add_lora(net, rank=4, targets="all" if kind == "unet" else "attention+mlp")
    _randomize_adapters(net, 0.05)
    outputs = {}
    with torch.no_grad():
        for dtype in (torch.float64, torch.float32):
            net.to(dtype)
            unmerged = net(x.to(dtype), t.to(dtype))
            lora.merge(net)
            assert lora.is_merged(net)
            merged = net(x.to(dtype), t.to(dtype))
            lora.unmerge(net)
            again = net(x.to(dtype), t.to(dtype))
            outputs[dtype] = unmerged, merged, again
            with lora.disabled(net):
                effect = (unmerged - net(x.to(dtype), t.to(dtype))).abs().max()
            assert effect > 1e-3
    exact = outputs[torch.float64]
    unmerged, merged, again = exact
    assert (merged - unmerged).abs().max() < 1e-6 and (again - unmerged).abs().max() < 1e-6
    rounding = [float((out.double() - ref).abs().max()) for out, ref in zip(outputs[torch.float32], exact)]
    assert max(rounding) < 1e-4                                        # the bound below stays far under 1e-2
    unmerged, merged, again = outputs[torch.float32]
    assert (merged - unmerged).abs().max() <= rounding[0] + rounding[1] + 1e-6
    assert (again - unmerged).abs().max() <= rounding[0] + rounding[2] + 1e-6


def test_disabled_gives_the_base_bitwise(nets):
    net = nets["unet"]
    base = copy.deepcopy(net)
    x, t = _inputs()
    lora.add_lora(net, rank=4, targets="all")
    _randomize_adapters(net)
    flags = [p.requires_grad for p in net.parameters()]
    with torch.no_grad():
        adapted = net(x, t)
        with lora.disabled(net):
            off = net(x, t)
        assert torch.equal(off, base(x, t))
        assert not torch.equal(adapted, off)
        assert torch.equal(net(x, t), adapted)   # enabled again
    assert [p.requires_grad for p in net.parameters()] == flags
    lora.merge(net)
    with pytest.raises(ValueError, match="unmerge"):
        with lora.disabled(net):
            pass


# --- what trains, what is chosen ---------------------------------------------------------
def test_only_the_adapters_train_and_their_count(nets):
    net = nets["dit"]
    names = lora.add_lora(net, rank=3, targets="attention")
    trainable, total = lora.trainable_count(net)
    assert trainable == sum(3 * (64 + 64) for _ in names) == 2 * 4 * 3 * 128
    assert total == sum(p.numel() for p in net.parameters())
    assert {n for n, p in net.named_parameters() if p.requires_grad} == \
        {f"{n}.lora_{ab}.default.weight" for n in names for ab in "AB"}


def test_the_target_sets(nets):
    u, d = nets["unet"], nets["dit"]
    attention = lora.target_names(u, "attention")
    assert attention and {n.rsplit(".", 1)[1] for n in attention} == {"q", "k", "v", "proj"}
    assert lora.target_names(u, "attention+mlp") == attention   # a UNet has no feed-forward
    ff = set(lora.target_names(d, "attention+mlp")) - set(lora.target_names(d, "attention"))
    assert ff == {f"blocks.{i}.mlp.{j}" for i in range(2) for j in (0, 2)}
    every_linear = lora.target_names(d, "all-linear")
    assert "final_layer.linear" not in every_linear and "time_embed.0" in every_linear   # not the output layer
    assert "out.2" not in lora.target_names(u, "all") and "input_conv" in lora.target_names(u, "all")
    assert "patch_embed.proj" in lora.target_names(d, "all") and "patch_embed.proj" not in every_linear
    # regexes: a whole name, or the end of one after a dot (peft's rule for names)
    assert lora.target_names(d, "q") == ["blocks.0.attn.q", "blocks.1.attn.q"]
    assert lora.target_names(d, r"blocks\.1\..*,time_embed\.0")[0] == "time_embed.0"


def test_an_unknown_target_names_the_layers_there_are(nets):
    with pytest.raises(ValueError, match=r"'to_q' matches no Linear or Conv2d.*blocks\.N\.attn\.q"):
        lora.add_lora(nets["dit"], targets="to_q")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        lora.add_lora(nets["dit"], targets="attn.(q")
    assert not lora.lora_layers(nets["dit"])  # nothing was injected


def test_a_rank_larger_than_a_layer_is_refused_naming_it(nets):
    with pytest.raises(ValueError, match=r"rank=65 .* blocks\.0\.attn\.q allows \(Linear, in 64, out 64"):
        lora.add_lora(nets["dit"], rank=65)
    with pytest.raises(ValueError, match=r"patch_embed\.proj allows \(Conv2d, in 4, out 64"):
        lora.add_lora(nets["dit"], rank=5, targets="all")
    assert not lora.lora_layers(nets["dit"])


def test_a_missing_peft_names_the_extra(nets, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(ImportError, match=r"pip install 'hirune\[lora\]'"):
        lora.add_lora(nets["dit"])


# --- tensors and files ---------------------------------------------------------------------
def test_state_dict_round_trip_and_peft_reads_the_files(nets, tmp_path):
    from peft import PeftModel

    net = nets["unet"]
    base = copy.deepcopy(net)
    names = lora.add_lora(net, rank=2, alpha=3.0, targets="attention")
    _randomize_adapters(net)
    tensors = lora.lora_state_dict(net)
    assert set(tensors) == {f"{n}.lora_{ab}.weight" for n in names for ab in "AB"}
    folder = lora.save_adapter(tmp_path / "adapter", net, hirune={"base": "runs/x"})
    config = json.loads((folder / lora.ADAPTER_CONFIG).read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 3.0 and config["hirune"] == {"base": "runs/x"}
    x, t = _inputs()
    net.eval()  # as PeftModel.from_pretrained leaves its model
    with torch.no_grad():
        want = net(x, t)
        # peft itself reads the folder onto a fresh copy of the base network
        with pytest.warns(UserWarning, match="hirune"):  # peft warns of the extra "hirune" entry, and ignores it
            theirs = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
        theirs_tensors = {k.removeprefix(lora.PEFT_PREFIX): v for k, v in theirs.state_dict().items()}
        assert all(torch.equal(v, theirs_tensors[k]) for k, v in net.state_dict().items())
        # the same tensors, not bitwise the same output: peft keeps the file's tensors, at other
        # memory alignments, where the CPU's matrix products may sum in another order (seen: 2e-6)
        assert (theirs(x, t) - want).abs().max() < 1e-5
        # and hirune reads it back: the same adapter, the same output
        config, read, info = lora.read_adapter(folder)
        assert info == {"base": "runs/x"} and read.keys() == tensors.keys()
        fresh = copy.deepcopy(base)
        assert lora.add_saved_lora(fresh, config, read, "mine") == names
        assert torch.equal(fresh(x, t), want)
    with pytest.raises(ValueError, match="do not fit adapter"):
        lora.load_lora(net, {k: v for k, v in tensors.items() if "down" not in k})
