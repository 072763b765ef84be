"""Textual inversion over a trained text-to-image run (Gal et al. 2022): the diffusion
settings `placeholder`, `initializer` and `instance`, with `base=RUN` (families.finetune).

    placeholder="<s*>"   a new word for the text encoder (`models.textual_inversion`), whose
                         embedding row alone trains; every other weight and row is frozen
    initializer="seven"  the row starts as this one-token word's embedding
    instance="digit:7"   the few images it learns from (`data.instances`), captioned with
                         templates holding the placeholder ("an image of <s*>", ...)

`instance` without a placeholder is DreamBooth (`families.dreambooth`: instance_prompt, and
class images unless prior_weight=0); `hirune reproduce textual-inversion` compares it (LoRA,
"a sks digit", prior_weight 0) on the same images.

The run's checkpoints hold the row alone (`frozen_names`: everything else, which the base
provides; the base's identity is checked on resume and load), and at every checkpoint its EMA
value goes to RUN/embedding.safetensors (a few kilobytes) with the placeholder, the
initializer and the encoder's identity -- tiny: the vocabulary's fingerprint and the text
encoder's weights' (the base's); minilm: the model's name and width -- so `use_embedding`
loads it into any run with the same encoder (`hirune sample RUN --embedding FILE`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..checkpoint import weights_fingerprint

PLACEHOLDER_KEYS = ("placeholder", "initializer")


def check(cfg, config) -> None:
    """placeholder needs base, text_encoder, initializer, a valid instance and no adapter;
    initializer needs a placeholder (an instance without a placeholder is DreamBooth's)."""
    if config.placeholder:
        missing = [k for k in ("base", "text_encoder", "initializer", "instance") if not getattr(config, k)]
        if missing:
            raise ValueError(f"placeholder={config.placeholder!r} (textual inversion) is not valid without "
                             f"{', '.join(missing)}; valid: `hirune train textual-inversion BASE_RUN "
                             "instance=digit:7 initializer=seven` (BASE_RUN: a text-conditioned diffusion run)")
        check_encoder(config.text_encoder)
        if config.adapter:
            raise ValueError(f"adapter={config.adapter!r} is not valid with placeholder= (textual inversion trains "
                             "the placeholder's embedding alone); valid: adapter=''")
    elif config.initializer:
        raise ValueError(f"initializer={config.initializer!r} is not valid without placeholder; valid: "
                         "placeholder=<s*> (textual inversion)")
    if config.placeholder:
        from ..data.instances import check_instance

        check_instance(config.instance)


def check_encoder(text_encoder: str) -> None:
    """A learned word lives in one encoder's table: two at once ("tiny+minilm") are refused."""
    if text_encoder not in ("tiny", "minilm"):
        raise ValueError(f"text_encoder={text_encoder!r} is not valid for textual inversion (a learned word is a "
                         "row of one encoder's embedding table); valid: 'tiny', 'minilm'")


# --- the placeholder in a run's text encoder -----------------------------------------------
def attach(run) -> None:
    """Freeze the network (started from the base by `finetune.attach`) and add the
    placeholder, its row started from the initializer's embedding."""
    run.model.requires_grad_(False)
    add_placeholder(run, run.config.placeholder, initializer=run.config.initializer)


def add_placeholder(run, placeholder: str, row: torch.Tensor | None = None, initializer: str = "") -> None:
    """Give `run`'s text encoder the new token `placeholder` with the embedding `row` (1, D),
    or the embedding of the one-token word `initializer`; the row is the one trainable tensor
    it adds.  A placeholder the vocabulary already has is refused."""
    from ..models import textual_inversion as ti

    text = run.text
    if text is None:
        raise ValueError(f"this {run.cfg.model} run has no text encoder (text_encoder=''); valid: a text-"
                         "conditioned run for a learned word")
    check_encoder(text.kind)
    if _placeholder_of(run) is not None:
        raise ValueError(f"placeholder={placeholder!r} is not valid here: this run already has the learned word "
                         f"{_placeholder_of(run)!r} (one per run)")
    if text.kind == "tiny":
        encoder = run.model.context.encoder
        new_id = encoder.token.weight.shape[0]
        start = ti.tiny_initializer(text.encode, placeholder, initializer) if row is None else None
        value = encoder.token.weight[start] if row is None else row
        encoder.token = ti.PlaceholderEmbedding(encoder.token, value.to(encoder.token.weight))
        text.encode = ti.PlaceholderTokenizer(text.encode, placeholder, new_id)
    else:
        shared = text.encode
        table = shared.model.get_input_embeddings().weight
        start = ti.minilm_initializer(shared.tokenizer, placeholder, initializer) if row is None else None
        value = table[start] if row is None else row
        run.model.text_placeholder = ti.PlaceholderRow(value.to(run.device, torch.float32))
        text.encode = ti.PlaceholderMiniLM(shared, placeholder, run.model.text_placeholder)
    run.placeholder = placeholder


def _placeholder_of(run) -> str | None:
    return getattr(run, "placeholder", None)


def placeholder_key(run) -> str:
    """The state-dict key of the placeholder's row."""
    return "context.encoder.token.placeholder" if run.text.kind == "tiny" else "text_placeholder.placeholder"


def placeholder_row(run) -> torch.Tensor:
    return run.model.state_dict()[placeholder_key(run)]


def frozen_names(run) -> list[str]:
    """A textual-inversion run's model state that the base provides: all but the row."""
    if not run.config.placeholder:
        return []
    key = placeholder_key(run)
    return [k for k in run.model.state_dict() if k != key]


# --- training data ---------------------------------------------------------------------------
def instance_data(run, data):
    """The run's training data replaced by the instance's images (no labels)."""
    from ..data.instances import instance_images

    images = instance_images(run.config.instance, data.data, data.labels)
    return dataclasses.replace(data, data=images, labels=None, indices=None)


def captioner(run):
    from ..data.instances import InstanceCaptioner

    return InstanceCaptioner(run.config.placeholder)


# --- identity and the embedding file -----------------------------------------------------------
def encoder_identity(run) -> dict:
    """What an embedding needs of a run's encoder to mean the same there."""
    from ..models import textual_inversion as ti

    text = run.text
    if text is None:
        return {"kind": ""}
    if text.kind == "tiny":
        tokenizer = text.encode.inner if isinstance(text.encode, ti.PlaceholderTokenizer) else text.encode
        weights = {k: v for k, v in run.model.context.encoder.state_dict().items() if k != "token.placeholder"}
        return {"kind": "tiny", "vocabulary": ti.vocabulary_fingerprint(tokenizer),
                "text_encoder": weights_fingerprint(weights)}
    return {"kind": "minilm", "model": ti.MINILM_NAME, "dim": int(text.context_dim)}


def write_embedding(run, run_dir: Path, step: int, ema) -> Path | None:
    """RUN/embedding.safetensors: the row's EMA value and what it means."""
    from ..models import textual_inversion as ti

    if not run.config.placeholder:
        return None
    with ema.applied(run.model):
        row = placeholder_row(run).detach().clone()
    c = run.config
    info = {"placeholder": c.placeholder, "initializer": c.initializer, "instance": c.instance, "step": step,
            "base": c.base, "base_step": run.base_identity["step"], "dataset": run.data.name,
            "encoder": encoder_identity(run)}
    return ti.save_embedding(Path(run_dir) / ti.EMBEDDING_FILE, row, info)


def use_embedding(run, path: str | Path) -> str:
    """Load a learned embedding (a file or a textual-inversion run) into `run` for sampling;
    returns its placeholder.  An embedding of another encoder is refused, naming both."""
    from ..models import textual_inversion as ti

    if run.text is not None:
        check_encoder(run.text.kind)
    row, info = ti.read_embedding(path)
    mine, theirs = encoder_identity(run), info.get("encoder", {})
    if mine != theirs:
        raise ValueError(f"embedding {path} was learned for the text encoder {_encoder(theirs)} (base "
                         f"{info.get('base')}); this run's is {_encoder(mine)}; valid: a run with the same encoder")
    if _placeholder_of(run) == info["placeholder"] and torch.equal(placeholder_row(run).cpu(), row[0].cpu()[None]):
        return info["placeholder"]  # a run's own embedding
    add_placeholder(run, info["placeholder"], row=row)
    return info["placeholder"]


def _encoder(identity: dict) -> str:
    if not identity.get("kind"):
        return "none (no text conditioning)"
    return ", ".join(f"{k} {identity[k]}" for k in sorted(identity, key=lambda k: (k != "kind", k)))
