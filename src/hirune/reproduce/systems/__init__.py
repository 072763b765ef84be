"""The later systems' notes (LoRA, DreamBooth, textual inversion, CLIP, ...): each trains what it
needs at the budget -- a base run, then the system on top of it -- and measures the system's
claim; one module per system.  NOTES holds each note's (name, shows, cost, run), the fields of
`registry.Note`, which the registry builds (this package does not import it: no cycle)."""

from __future__ import annotations

from . import clip, dalle, dreambooth, lora, textual_inversion, unclip

NOTES = [   # (name, the claim in one line, budget -> wall time on 2 CPU cores, run(budget) -> Report)
    ("lora", "LoRA adapts a trained model with a small share of its weights: the adapter file and AdamW's state "
             "shrink with the rank; measured beside full fine-tuning on a new domain (mnist5k inverted): "
             "whether it adapts as well, and an equal-parameter pair",
     {"tiny": "6 s", "small": "5-10 min", "full": "1.5 h"}, lora.lora_note),
    ("dreambooth", "DreamBooth binds a subject (crossbar sevens) to 'a sks seven'; without prior preservation "
                   "(lambda = 0) the class drifts toward the subject, lambda = 1 keeps it: fidelity, drift, "
                   "diversity and the other digits' text accuracy before and after",
     {"tiny": "8 s", "small": "4 min", "full": "1 h"}, dreambooth.dreambooth_note),
    ("textual-inversion", "textual inversion teaches a frozen text-to-image run a subject through one new word's "
                          "embedding (a few hundred bytes); beside it LoRA and DreamBooth on the same images: the "
                          "share of samples read as the subject's digit before and after",
     {"tiny": "8 s", "small": "7 min", "full": "1 h"}, textual_inversion.textual_inversion_note),
    ("clip", "CLIP trained by InfoNCE on captioned digits classifies them zero-shot from a caption per digit, "
             "with held-out phrasings too; beside it the same image tower trained on the labels, the same steps",
     {"tiny": "3 s", "small": "5 min", "full": "12 min"}, clip.clip_note),
    ("dalle", "DALL-E draws a caption's digit as a VQ tokenizer's codes, one by one after the caption's tokens; "
              "guidance on the logits buys the digit named at a cost in variety; priming with the top code rows "
              "completes a test digit in its class",
     {"tiny": "5 s", "small": "5 min", "full": "15 min"}, dalle.dalle_note),
    ("dalle-rerank", "DALL-E's reranking: the best of N candidates by a CLIP run's similarity to the caption "
                     "(N = 1, 4, 16, with and without guidance) draws the digit named more often, most on held-out "
                     "phrasings, at a cost in variety and N times the sampling",
     {"tiny": "7 s", "small": "10 min", "full": "25 min"}, dalle.dalle_rerank_note),
    ("unclip", "unCLIP: the prior's image embedding is closer to the real image's than CLIP's text embedding, and "
               "decoding it draws the digit named more often (held-out phrasings most) than decoding the text "
               "embedding directly; variations keep the class; interpolation strips",
     {"tiny": "5 s", "small": "15 min", "full": "30 min"}, unclip.unclip_note),
]
