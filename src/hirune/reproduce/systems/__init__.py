"""The later systems' notes (LoRA, ...): each trains what it needs at the budget -- a base run,
then the system on top of it -- and measures the system's claim; one module per system."""

from __future__ import annotations

from ..registry import Note
from . import lora

NOTES = [
    Note("lora", "LoRA adapts a trained model with a small share of its weights: the adapter file and AdamW's state "
                 "shrink with the rank; measured beside full fine-tuning on a new domain (mnist5k inverted), "
                 "whether it adapts as well (attention-only LoRA does not here), and an equal-parameter pair",
         {"tiny": "6 s", "small": "6 min", "full": "1.5 h"}, lora.lora_note),
]
