"""`hirune train dreambooth BASE_RUN [key=value ...]`: the run named after its base, the
DreamBooth defaults, the class images beside it; refusals as one line and exit status 2."""

from __future__ import annotations

import json

import numpy as np

from hirune.cli import main
from hirune.data import load_dataset

SMALL = json.dumps({"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [2],
                    "head_channels": 16})
TINY = ["steps=2", "ckpt_every=2", "sample_every=0", "batch_size=8", "sample_steps=2"]


def test_train_dreambooth(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "text-digits", *TINY, f"model_config={SMALL}", "out=runs/base"]) == 0
    assert main(["train", "vpred-digits", *TINY, f"model_config={SMALL}", "out=runs/plain"]) == 0
    data = load_dataset("digits", "train")
    np.savez(tmp_path / "subject.npz", images=data.data[data.labels == 7][:2].numpy())
    assert main(["train", "dreambooth", "runs/base", *TINY, "instance=subject.npz", "class_images=4",
                 "prior_weight=0.5"]) == 0
    config = json.loads((tmp_path / "runs" / "base-dreambooth" / "config.json").read_text())
    section = config["family_config"]
    assert section["base"] == "runs/base" and section["instance"] == "subject.npz" and section["prior_weight"] == 0.5
    assert section["instance_prompt"] == "a sks seven" and section["class_prompt"] == "a seven"
    assert config["lr"] == 1e-4 and section["adapter"] == ""
    assert (tmp_path / "runs" / "base-dreambooth" / "class_images.safetensors").is_file()
    capsys.readouterr()
    assert main(["train", "dreambooth", "runs/plain", *TINY]) == 2            # a base without text
    assert "needs a text-conditioned base" in capsys.readouterr().err
    assert main(["train", "dreambooth", "runs/base", *TINY, "instance=dotted-sevens"]) == 2
    assert "crossbar-sevens" in capsys.readouterr().err
    assert main(["train", "dreambooth"]) == 2
