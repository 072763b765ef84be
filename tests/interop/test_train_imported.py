"""An imported diffusers network trains like any hirune network: `hirune train finetune RUN`
continues it in hirune's loop (its weights move, the run samples and exports back to a
diffusers folder that computes what hirune's run computes), and `hirune train lora RUN` adapts
its attention where diffusers' own LoRA training does (to_q, to_k, to_v, to_out.0), the base
frozen."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from optional import lazy, needs
from hirune.training.loading import load

sys.path.insert(0, str(Path(__file__).parent))
from test_import import cli, random_unet, save_pipeline  # noqa: E402

diffusers = lazy("diffusers")
pytestmark = [needs("diffusers"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SHORT = ["steps=2", "batch_size=8", "log_every=1", "ckpt_every=2", "sample_every=0", "warmup=1"]


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    cli("import", save_pipeline(root / "pipe", "epsilon", random_unet()), "--out", root / "run", "--dataset", "digits")
    return root


def test_finetuning_an_imported_unet_moves_its_weights_and_exports_back(imported):
    ft = imported / "ft"
    cli("train", "finetune", imported / "run", *SHORT, f"out={ft}", "lr=1e-3")
    before, after = load(imported / "run"), load(ft)
    assert type(after.model.net).__name__ == "UNet2DModel" and after.step == 2
    moved = [n for (n, a), b in zip(before.model.state_dict().items(), after.model.state_dict().values())
             if not torch.equal(a, b)]
    assert len(moved) > 0.9 * len(before.model.state_dict())
    cli("export", ft, "--format", "diffusers", "--out", imported / "ft-diffusers")
    theirs = diffusers.UNet2DModel.from_pretrained(imported / "ft-diffusers" / "unet", local_files_only=True).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 700.0])
    with torch.no_grad():
        assert torch.allclose(theirs(x, t).sample, after.model(x, t), atol=1e-5)
    assert torch.isfinite(after.generate(2, steps=3, seed=0, progress=False)[0].x).all()


def test_lora_on_an_imported_unet_adapts_diffusers_attention_projections_and_freezes_the_rest(imported):
    from hirune.models.lora import target_names

    base = load(imported / "run")
    names = target_names(base.model, "attention")
    assert names and {n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0" for n in names} == \
        {"to_q", "to_k", "to_v", "to_out.0"}
    out = imported / "lora"
    cli("train", "lora", imported / "run", *SHORT, f"out={out}", "lr=1e-2")
    tuned = load(out)
    weights = dict(tuned.model.named_parameters())
    adapters = [n for n in weights if "lora_" in n]
    assert adapters and all(any(t + "." in n for t in names) for n in adapters)
    base_weights = dict(base.model.named_parameters())
    for name, w in weights.items():   # the base, under peft's names, is bitwise the imported network's
        plain = name.replace("base_model.model.", "").replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(w, base_weights[plain]), name
