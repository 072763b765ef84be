"""The later systems' notes (LoRA, DreamBooth, textual inversion, CLIP, ...): each trains what it
needs at the budget -- a base run, then the system on top of it -- and measures the system's
claim; one module per system."""

from __future__ import annotations

from ..registry import Note
from . import clip, dalle, dreambooth, lora, textual_inversion

NOTES = [
    Note("lora", "LoRA adapts a trained model with a small share of its weights: the adapter file and AdamW's state "
                 "shrink with the rank; measured beside full fine-tuning on a new domain (mnist5k inverted): "
                 "whether it adapts as well, and an equal-parameter pair",
         {"tiny": "6 s", "small": "10 min", "full": "1.5 h"}, lora.lora_note),
    Note("dreambooth", "DreamBooth binds a subject (crossbar sevens) to 'a sks seven'; without prior preservation "
                       "(lambda = 0) the class drifts toward the subject, lambda = 1 keeps it: fidelity, drift, "
                       "diversity and the other digits' text accuracy before and after",
         {"tiny": "8 s", "small": "6 min", "full": "1 h"}, dreambooth.dreambooth_note),
    Note("textual-inversion", "textual inversion teaches a frozen text-to-image run a subject through one new word's "
                              "embedding (a few hundred bytes); beside it LoRA and DreamBooth on the same images: the "
                              "share of samples read as the subject's digit before and after",
         {"tiny": "8 s", "small": "5 min", "full": "1 h"}, textual_inversion.textual_inversion_note),
    Note("clip", "CLIP trained by InfoNCE on captioned digits classifies them zero-shot from a caption per digit, "
                 "with held-out phrasings too; beside it the same image tower trained on the labels, the same steps",
         {"tiny": "3 s", "small": "3 min", "full": "12 min"}, clip.clip_note),
    Note("dalle", "DALL-E draws a caption's digit as a VQ tokenizer's codes, one by one after the caption's tokens; "
                  "guidance on the logits buys the digit named at a cost in variety; priming with the top code rows "
                  "completes a test digit in its class",
         {"tiny": "5 s", "small": "5 min", "full": "15 min"}, dalle.dalle_note),
]
