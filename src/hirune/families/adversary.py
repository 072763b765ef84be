"""The adversary of autoencoder training: a patch discriminator with its own optimizer
(VQGAN, Esser et al. 2021, sec. 3.1; LDM, Rombach et al. 2022, appendix G).

The losses are in `autoencoding.py` (the generator's term with its adaptive weight, eq. 7,
and the discriminator's hinge / vanilla loss); this module is the second player that the
training loop (`trainer.Run.train_step`) steps beside the autoencoder:

    optimizer step k >= disc_start:
        generator:      autoencoder_loss(..., **adversary.generator_kwargs(model))  -> backward
        discriminator:  adversary.step([(x, x_hat) of each micro-batch])           -> backward, clip
        (one sync: every loss finite?)  ->  optimizer.step(); adversary.optimizer.step()

`Adversary` owns the discriminator (pix2pix's NLayerDiscriminator, Isola et al. 2017, with
GroupNorm: `models/discriminator.py`), replicated on every rank under DDP whatever the
generator's strategy, and its AdamW at the generator's learning rate with taming's betas
(0.5, 0.9): taming-transformers' second optimizer.  The discriminator judges the
reconstructions the generator step already made (detached), on the same micro-batches.
The adaptive weight differentiates through the decoder's whole last layer, so only ddp
and zero1 are allowed (FSDP2 keeps it sharded); on several processes its two gradients are
averaged over the ranks (`mean_over_ranks`), so N processes compute what one does.  fp16
is refused (no loss scaling for the discriminator).  Its weights and optimizer state go
into every checkpoint as "discriminator" and "disc_optimizer", and are left out of exports.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from ..checkpoint import flatten_optimizer_state, unflatten_optimizer_state
from ..distributed.runtime import World
from ..models import PatchDiscriminator

GAN_STRATEGIES = ("ddp", "zero1")  # the discriminator's adaptive weight needs the decoder's whole last layer


class Adversary:
    """The patch discriminator of an autoencoder run, its DDP forward and its AdamW.

    config: the autoencoder's config (in_channels, disc_channels, disc_layers, disc_start,
    disc_loss); cfg: the run's TrainConfig (strategy, seed, lr, weight_decay, grad_clip);
    image_size: the side of the training images; dtype: the run's autocast dtype (None:
    fp32) and autocast its context; channels_last: the run's image layout on CUDA.

    The discriminator is initialised from its own seed (cfg.seed + 2), so the global RNG,
    and with it the run up to disc_start, is that of the same run without it."""

    def __init__(self, config, cfg, world: World, device: torch.device, image_size: int, *,
                 dtype: torch.dtype | None, autocast: Callable[[], AbstractContextManager],
                 channels_last: bool = False):
        from ..distributed.strategy import make_optimizer, wrap  # at call time, as the trainer (tests swap them)

        if cfg.strategy not in GAN_STRATEGIES:
            raise ValueError(f"the adversarial loss (disc_weight > 0) needs strategy in {list(GAN_STRATEGIES)}, "
                             f"not {cfg.strategy!r}: its adaptive weight differentiates through the decoder's "
                             "last layer, which FSDP2 keeps sharded")
        if dtype == torch.float16:
            raise ValueError("the adversarial loss (disc_weight > 0) does not support precision='fp16' (no loss "
                             "scaling for the discriminator); use 'bf16' or 'fp32'")
        self.config, self.world, self.device = config, world, device
        self.grad_clip, self.autocast = cfg.grad_clip, autocast
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 2)
            self.discriminator = PatchDiscriminator(config.in_channels, config.disc_channels, config.disc_layers,
                                                    image_size).to(device)
        if channels_last:
            self.discriminator.to(memory_format=torch.channels_last)
        self.forward = wrap(self.discriminator, "ddp", world, device)
        self.optimizer = make_optimizer(self.discriminator, "ddp", world, device, cfg.lr, cfg.weight_decay,
                                        betas=(0.5, 0.9))
        self.terms: dict[str, Tensor] = {}  # the last step's mean logits (last micro-batch), for the log

    def active(self, step: int) -> bool:
        """Whether optimizer step `step` trains with the adversarial loss (taming's
        disc_factor: 0 before disc_start)."""
        return step >= self.config.disc_start

    def generator_kwargs(self, autoencoder: nn.Module) -> dict:
        """The adversarial keywords of `autoencoder_loss`: VQGAN's generator term with its
        adaptive weight (eq. 7) at the decoder's last layer, whose gradients are averaged
        over the ranks on several processes."""
        return dict(discriminator=self.discriminator, last_layer=autoencoder.last_layer(),
                    average=self.mean_over_ranks if self.world.distributed else None)

    def step(self, pairs: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The discriminator's gradients for one optimizer step: its loss (`disc_loss`) on each
        micro-batch's images and (detached) reconstructions from the generator step,
        accumulated like the generator's (DDP all-reduces on the last micro-batch), then
        clipped.  Returns this rank's mean loss and the gradient norm on the device (no
        sync); the caller steps `optimizer` once every loss is known to be finite."""
        from ..objectives.autoencoder import discriminator_loss
        from ..distributed.strategy import sync_gradients

        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        for k, (real, fake) in enumerate(pairs):
            with sync_gradients(self.forward, "ddp", last=k == len(pairs) - 1):
                with self.autocast():
                    loss, logits_real, logits_fake = discriminator_loss(self.forward, real, fake,
                                                                        self.config.disc_loss)
                (loss / len(pairs)).backward()
            total += loss.detach() / len(pairs)
        self.terms = dict(logits_real=logits_real, logits_fake=logits_fake)  # the last micro-batch's means
        return total, torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), self.grad_clip)

    def mean_over_ranks(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The tensors averaged over the ranks, in one all-reduce (SUM, then divide)."""
        flat = torch.cat([x.detach().float().flatten() for x in tensors])
        torch.distributed.all_reduce(flat)
        parts = (flat / self.world.size).split([x.numel() for x in tensors])
        return tuple(p.view(x.shape).to(x.dtype) for p, x in zip(parts, tensors))

    # --- checkpoints -----------------------------------------------------------------
    def checkpoint(self) -> tuple[dict, dict]:
        """(tensors, state) for the run's checkpoint: the weights and AdamW state under
        "discriminator" and "disc_optimizer".  Replicated: rank 0's copy is everyone's."""
        optim_tensors, optim_state = flatten_optimizer_state(self.optimizer.state_dict())
        tensors = {"discriminator": self.discriminator.state_dict(), "disc_optimizer": optim_tensors}
        return tensors, {"disc_optimizer": optim_state}

    def load(self, tensors: dict, state: dict) -> None:
        """Restore what `checkpoint` wrote, from a loaded checkpoint's (tensors, state)."""
        self.discriminator.load_state_dict(tensors["discriminator"])
        self.optimizer.load_state_dict(unflatten_optimizer_state(tensors["disc_optimizer"],
                                                                 state["disc_optimizer"]))
