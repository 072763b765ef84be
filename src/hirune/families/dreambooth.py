"""DreamBooth (Ruiz et al. 2023): fine-tune a trained text-to-image diffusion run on a few
instance images of one subject bound to a rare identifier ("a sks seven"), with the
prior-preservation loss.  Settings of the diffusion family, with base=RUN (`finetune`):

    instance="crossbar-sevens"  the subject: a name in `data.subjects.SUBJECTS`, a folder of
                                PNG/JPEG images or an .npz file (images of the base's shape)
    instance_prompt             the identifier's prompt, "a sks seven"
    class_prompt                the class's prompt, "a seven"
    prior_weight                lambda: loss = mean instance loss + lambda x mean class loss
                                (`objectives.prior_preservation_loss`); 0: no prior preservation
    class_images                how many class images the frozen base generates

Before training (`prepare`), the frozen base -- its EMA weights, sampled with the run's
sampler and steps, no guidance, seeded seed + CLASS_SEED -- generates `class_images` images
under the class prompt once; they are kept in RUN/class_images.safetensors with what they
were drawn from (the base's step and weights' fingerprint, prompt, count, sampler, seed) and
read back on resume, so resuming is exact and never samples again.

Each step's global batch alternates rows: even rows an instance image under the instance
prompt, odd rows a class image under the class prompt, each drawn uniformly in `draw` (from
the run's noise generator, for the whole global batch, so every rank agrees); a rank's
micro-batch (an even number of rows, checked) holds as many of each, so the mean over
ranks of (instance mean + lambda class mean) is the global one.  The loop's own data order
is not used.  Captions are dropped to "" with the base's p_uncond (classifier-free
guidance).  Full weights (adapter="") or LoRA (adapter="lora") alike.  The rows are the same
at every lambda (lambda = 0 still draws, and ignores, the class rows), so runs that differ
only in lambda see the same instance rows, times and noise.

With the tiny word encoder an identifier outside the training captions' vocabulary ("sks")
is the [UNK] token, which the base never saw: any unknown word is the same identifier.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import Tensor

from .. import objectives as O
from .base import Batch
from .settings import Range

RANGES = {"prior_weight": Range(0), "class_images": Range(1, integer=True)}
KEYS = ("instance_prompt", "class_prompt", "prior_weight", "class_images")
CLASS_IMAGES = "class_images.safetensors"
CLASS_SEED = 11      # the class images' noise: seed + 11


def active(config) -> bool:
    """Whether a run is DreamBooth's: instance images and no placeholder (with a placeholder
    they teach a new word instead: families.textual_inversion)."""
    return bool(config.instance) and not config.placeholder


def check(cfg, config) -> None:
    """The settings, before anything is built: the DreamBooth keys need instance=; instance=
    needs base= and a text-conditioned pixel-space base, two different prompts, a subject
    that exists, and an even batch per micro-batch (half instance, half class rows)."""
    from ..data.instances import check_instance

    if not active(config):
        defaults = type(config)()
        changed = [k for k in KEYS if getattr(config, k) != getattr(defaults, k)]
        if changed:
            raise ValueError(f"{', '.join(f'{k}={getattr(config, k)!r}' for k in changed)} is not valid without "
                             "instance=; valid: these settings with instance=SUBJECT (DreamBooth, `hirune train "
                             "dreambooth BASE_RUN`)")
        return
    where = f"instance={config.instance!r}"
    if not config.base:
        raise ValueError(f"{where} is not valid without base; valid: base=RUN, a trained text-to-image diffusion "
                         "run (e.g. `hirune train dreambooth runs/text-mnist5k`)")
    if not config.text_encoder:
        raise ValueError(f"{where} needs a text-conditioned base; base={config.base!r} has text_encoder='' "
                         "(class-conditional or unconditional); valid: a run trained with "
                         "text_encoder=tiny|minilm|tiny+minilm (e.g. the preset text-mnist5k)")
    for key in ("autoencoder", "clip", "low_res"):
        if getattr(config, key):
            raise ValueError(f"{where} is not valid with {key}={getattr(config, key)!r}: DreamBooth here tunes a "
                             "pixel-space text-to-image run; valid: a base without autoencoder, clip or low_res")
    if not config.instance_prompt.strip() or not config.class_prompt.strip() \
            or config.instance_prompt == config.class_prompt:
        raise ValueError(f"instance_prompt={config.instance_prompt!r}, class_prompt={config.class_prompt!r} is not "
                         "valid; valid: two different, non-empty prompts (e.g. 'a sks seven' and 'a seven')")
    if config.prior_weight and (cfg.batch_size // cfg.grad_accum) % 2:
        raise ValueError(f"batch_size={cfg.batch_size} with grad_accum={cfg.grad_accum} is not valid with {where}: "
                         "each micro-batch is half instance, half class rows; valid: an even batch_size / grad_accum")
    check_instance(config.instance)


# --- training ---------------------------------------------------------------------------
class PromptCaptioner:
    """The captions of DreamBooth's rows: examples [0, instances) are instance images (the
    instance prompt), the rest class images (the class prompt); "" where dropped."""

    def __init__(self, instances: int, instance_prompt: str, class_prompt: str):
        self.instances, self.instance_prompt, self.class_prompt = instances, instance_prompt, class_prompt

    def captions(self, idx: Tensor, template: Tensor | None = None, drop: Tensor | None = None) -> list[str]:
        dropped = drop.cpu().tolist() if drop is not None else [False] * len(idx)
        return ["" if d else self.instance_prompt if i < self.instances else self.class_prompt
                for i, d in zip(idx.cpu().tolist(), dropped)]


def prepare(run, data, context) -> None:
    """The instance images, the class images (generated once, or read back), and the rows
    the draws index: run.train_data holds [instances; class images], unlabelled."""
    from ..data.instances import instance_images

    cfg, config = run.cfg, run.config
    per_rank = cfg.batch_size // (cfg.grad_accum * context.world.dp_size)
    if config.prior_weight and per_rank % 2:
        raise ValueError(f"batch_size={cfg.batch_size} on {context.world.dp_size} data-parallel processes with "
                         f"grad_accum={cfg.grad_accum} gives {per_rank} rows per micro-batch; DreamBooth needs an even "
                         "number (half instance, half class rows); valid: batch_size a multiple of 2 x grad_accum x "
                         "processes")
    instances = instance_images(config.instance, data.data, data.labels).float()
    if tuple(instances.shape[1:]) != tuple(run.data.shape):
        raise ValueError(f"instance={config.instance!r} holds images of shape {tuple(instances.shape[1:])}; valid: "
                         f"images of the base's shape {tuple(run.data.shape)} ({run.data.name})")
    # prior_weight 0: plain fine-tuning on the instance (every row an instance image), no class images
    classes = class_images(run, context) if config.prior_weight else instances[:0]
    examples = torch.cat([instances, classes])
    run.train_data = dataclasses.replace(data, data=examples, labels=None, indices=None)
    run.examples = examples.to(run.device)
    run.instance_count = len(instances)
    run.captioner = PromptCaptioner(len(instances), config.instance_prompt, config.class_prompt)


def draw(run, d, n: int, generator: torch.Generator):
    """Adds to the draw `d` each row's example: even rows an instance image, odd rows a class
    image, drawn uniformly (`is_class` (n,) bool, `example` (n,) int64)."""
    g, classes = generator, len(run.examples) - run.instance_count
    d.is_class = (torch.arange(n) % 2 == 1).to(run.device) if classes else torch.zeros(n, dtype=torch.bool,
                                                                                        device=run.device)
    instance = torch.randint(run.instance_count, (n,), generator=g, device=g.device)
    klass = run.instance_count + torch.randint(max(classes, 1), (n,), generator=g, device=g.device)
    d.example = torch.where(d.is_class.to(g.device), klass, instance).to(run.device)
    return d


def batch(run, d) -> Batch:
    """This rank's rows of the draw `d` (already sliced): the images and their positions."""
    return Batch(run.examples[d.example], None, d.example)


def prior_preserved(out: O.Loss, d, prior_weight: float) -> O.Loss:
    """The objective's rows combined by `objectives.prior_preservation_loss`, with both terms."""
    loss, instance, prior = O.prior_preservation_loss(out.rows, d.is_class, prior_weight)
    terms = {**out.terms, "instance_loss": instance.detach(), "prior_loss": prior.detach()}
    return dataclasses.replace(out, loss=loss, terms=terms)


def logged_terms(terms: dict) -> dict[str, float]:
    return {k: float(terms[k]) for k in ("instance_loss", "prior_loss") if k in terms}


# --- the class images -------------------------------------------------------------------
def class_origin(run) -> dict:
    """What the class images are drawn from: the base (step, fingerprint), prompt, count,
    sampler, steps and seed."""
    c, base = run.config, run.base_identity
    return {"base_step": base["step"], "base_fingerprint": base["fingerprint"], "prompt": c.class_prompt,
            "n": c.class_images, "sampler": c.sampler, "steps": c.sample_steps, "seed": run.cfg.seed + CLASS_SEED}


def class_images(run, context) -> Tensor:
    """The class images of the run directory, or (rank 0) generated by the frozen base and
    stored, then read by the other ranks: (class_images, C, H, W) on the CPU."""
    origin, path = class_origin(run), Path(context.run_dir) / CLASS_IMAGES
    images = read_class_images(path, origin)
    if images is None and context.world.main:
        images = generate_class_images(run.references["base"], origin)
        write_class_images(path, images, origin)
    if context.world.distributed:
        torch.distributed.barrier()
        if images is None:
            images = read_class_images(path, origin)
    return images


def generate_class_images(base, origin: dict) -> Tensor:
    """`origin["n"]` samples of the frozen base under the class prompt (a progress bar)."""
    print(f"DreamBooth: the base draws {origin['n']} class images of {origin['prompt']!r} "
          f"({origin['sampler']}, {origin['steps']} steps)", flush=True)
    was_training = base.model.training
    base.model.eval()
    with torch.no_grad():
        out, _ = base.generate(origin["n"], sampler=origin["sampler"], steps=origin["steps"], seed=origin["seed"],
                               prompts=[origin["prompt"]] * origin["n"], progress=True)
    base.model.train(was_training)
    return out.x.float().clamp(-1, 1).cpu()


def read_class_images(path: Path, origin: dict) -> Tensor | None:
    """The stored class images, None where there are none yet; images drawn from anything
    else than `origin` are refused, naming both."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        saved = json.loads((f.metadata() or {}).get("origin", "{}"))
        if saved != origin:
            raise ValueError(f"{path} holds class images drawn from {saved}; this run asks for {origin}; move it "
                             "away to draw them again")
        return f.get_tensor("images")


def write_class_images(path: Path, images: Tensor, origin: dict) -> Path:
    """Store the class images atomically (a temporary file renamed into place)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"images": images.contiguous()}, str(tmp), metadata={"origin": json.dumps(origin)})
    os.replace(tmp, path)
    return path
