"""benchmarks/unclip_eval.py at tiny size: a 2-step CLIP and decoder on the 8 x 8 digits and a
stand-in prior (CLIP's text embedding) go through every measurement; the tables, the JSON
and both pictures are written, and the shares are shares."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hirune.inference.unclip import UnCLIP
from hirune.training import load, preset_config, train
from benchmark_scripts import load_benchmark

unclip_eval = load_benchmark("unclip_eval")


class TextPrior:
    def __init__(self, clip):
        self.clip, self.config = clip, type("C", (), {"clip": "stub"})()

    def generate_embeddings(self, prompts, **options):
        return self.clip.embed_text(prompts)


@pytest.mark.slow
def test_the_unclip_benchmark_runs_end_to_end_at_tiny_size(tmp_path):
    train(preset_config("clip-digits", {"model_config": {"channels": 8, "embed_dim": 16, "text_dim": 32,
                                                         "text_depth": 1}, "batch_size": 32, "steps": 2,
                                        "ckpt_every": 2, "out": str(tmp_path / "clip")}), progress=False)
    train(preset_config("vpred-digits", {"clip": str(tmp_path / "clip"), "steps": 2, "sample_every": 0,
                                         "ckpt_every": 2, "out": str(tmp_path / "decoder"),
                                         "model_config": {"channels": 16, "channel_mult": [1, 2],
                                                          "attention_resolutions": [2], "head_channels": 16}}),
          progress=False)
    decoder = load(tmp_path / "decoder")
    out = tmp_path / "bench" / "unclip"
    result = unclip_eval.evaluate(UnCLIP(TextPrior(decoder.clip), decoder), n=20, text_n=10, scales=[1.0, 2.0],
                                  steps=2, sources=2, per=2, out=out, frames=3, ddim_steps=8)
    rows = result["text_to_image"]
    assert [(r["prior"], r["scale"]) for r in rows] == [(True, 1.0), (True, 2.0), (False, 1.0), (False, 2.0)]
    for r in rows:
        assert r["frechet_distance"] > 0 and 0 <= r["class_accuracy"] <= 1
        assert 0 <= r["train_phrasing_accuracy"] <= 1 and 0 <= r["held_out_phrasing_accuracy"] <= 1
    v = result["variations"]
    assert 0 <= v["source_class_kept"] <= 1 and v["rms_between_variations"] > 0
    assert json.loads(out.with_suffix(".json").read_text())["n"] == 20
    assert "| yes | 2 |" in out.with_suffix(".md").read_text()
    for picture in result["pictures"].values():
        assert Path(picture).is_file()
    assert torch.isfinite(torch.tensor(v["rms_variation_to_source"]))
