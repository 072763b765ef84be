"""The autoencoder family's evaluation (`families/autoencoder.py`): n counts test images,
all of them by default, and a count beyond the test split is refused rather than cut."""

from __future__ import annotations

import pytest

from hirune.training.presets import preset_config
from hirune.training.trainer import Trainer


def test_evaluate_reconstructs_the_test_split_by_default(tmp_path):
    tiny = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "mid_attention": False, "z_channels": 2}
    family = Trainer(preset_config("kl-ae-digits", {"model_config": tiny, "out": str(tmp_path)})).family
    family.model.eval()
    assert family.evaluate()["examples"] == 300
    assert family.evaluate(7)["examples"] == 7
    with pytest.raises(ValueError, match="n=301: the digits test split has 300 examples; give at most 300"):
        family.evaluate(301)
