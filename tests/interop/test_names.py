"""The name mappings: diffusers_to_dit undoes dit_to_diffusers (conditional and unconditional)."""

from __future__ import annotations

import pytest
import torch

from hirune.models import build_model
from hirune.training.diffusers_names import diffusers_to_dit, dit_to_diffusers


@pytest.mark.parametrize("num_classes", [None, 10])
def test_dit_names_round_trip(num_classes):
    model = build_model("dit", size="T/2", in_channels=4, image_size=8, num_classes=num_classes, depth=2)
    sd = model.state_dict()
    theirs = dit_to_diffusers(sd, depth=2, hidden_size=model.config.hidden_size)
    back = diffusers_to_dit(theirs, depth=2, conditional=num_classes is not None)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    if num_classes is None:  # diffusers' mandatory class table: zeros, label 0 and the null label
        assert torch.equal(theirs["transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"],
                           torch.zeros(2, model.config.hidden_size))
