"""A run being trained: `Trainer(cfg)` builds it, `Trainer.train_step` is one optimizer step,
`save` / `load` are its checkpoints.  The loop around it is `loop.train`.

What the trainer holds is the same for every family: the process group and device, the
family object (its network and whatever it adds: process, denoiser, first stage, ...), the
strategy's forward (DDP / FSDP2), AdamW, the EMA, the fp16 loss scaler and the noise
generator.  It never asks which family it trains; the family answers through its
interface (`families.base.Family`).

One optimizer step = `grad_accum` micro-batches -> clip -> AdamW -> EMA update.  A step
that is read (`read=True`: the CPU's every step; on a GPU the steps the loop logs,
checkpoints or previews) syncs once (losses and gradient norm read together) and checks
them before the weights change; an unread step keeps its check on the device (the first
non-finite step and its values), so a GPU runs ahead without waiting for the host, and the
next read -- at the latest the next checkpoint's -- raises for it, naming that step.  The
learning rate is a pure function of the step, the data order a pure function of (seed,
micro-batch counter), and every random input of a batch comes from the
noise generator, drawn for the whole global batch on every rank (each keeps its slice):
N processes compute what one does, and a checkpoint (weights, EMA, AdamW, generator
states, step, what the family adds) resumes the run exactly, on any number of processes.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import torch

from ..allocator import keep_freed_memory
from ..checkpoint import (CheckpointError, flatten_optimizer_state, load_checkpoint, resolve_checkpoint,
                          save_checkpoint, staging_dir, unflatten_optimizer_state)
from ..families import Batch, Context, get_family
from .config import TrainConfig, check_config, upgrade
from .ema import EMA
from .loading import reference_source, with_frozen


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to cfg.lr, then constant or cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def micro_batch_indices(n: int, size: int, counter: int, seed: int) -> torch.Tensor:
    """Indices of micro-batch number `counter`: a stream of per-epoch permutations seeded by
    (seed, epoch), so the data order depends only on the counter (exact resume) and every
    example is seen once per epoch."""
    start, taken, pieces = counter * size, 0, []
    while taken < size:
        epoch, offset = divmod(start + taken, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        pieces.append(perm[offset: offset + size - taken])
        taken += len(pieces[-1])
    return torch.cat(pieces)


def load_reference(path: str):
    """Another run this one builds on (a first stage, a teacher), loaded light.  Loading
    seeds the global RNG with that run's seed and builds its network before reading its
    weights, as training always has: a run's own network is initialised after its
    references, so this keeps every run's initialisation what it was."""
    from .loading import load

    return load(path, isolate_rng=False)


class Trainer:
    """Everything built from a config for training (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, distributed: bool = True):
        from ..data import load_dataset
        from ..distributed import runtime
        from ..distributed.strategy import make_optimizer, wrap
        from ..models.recompute import recompute_attention, recompute_blocks

        section = check_config(cfg)
        torch.manual_seed(cfg.seed)  # the network's init (and dropout); a resumed run restores its RNG state
        self.cfg = cfg
        if distributed:  # joins torchrun's process group when there is one
            self.world, self.device = runtime.setup(cfg.device)
        else:
            self.world = runtime.World()
            self.device = torch.device(cfg.device if cfg.device != "auto"
                                       else "cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cpu":
            keep_freed_memory()  # activations re-allocated every step reuse the heap's pages (hirune.allocator)
        if cfg.tp > 1:  # the ranks form a dp x tp grid; a tp group reads the same examples
            from ..distributed.tensor_parallel import check_grid

            check_grid(self.world.size, cfg.tp)
            self.world = dataclasses.replace(self.world, tp=cfg.tp)
        per_rank = cfg.grad_accum * self.world.dp_size
        if cfg.batch_size % per_rank:
            raise ValueError(f"batch_size={cfg.batch_size} (the global batch) must be divisible by grad_accum x "
                             f"data-parallel processes = {cfg.grad_accum} x {self.world.dp_size}")
        self.micro_batch = cfg.batch_size // per_rank  # per data-parallel rank
        data = load_dataset(cfg.dataset, "train")
        family = get_family(cfg.family)
        references = {}
        for role, path in family.reference_paths(section, True).items():
            source = reference_source(cfg.out, role, path)
            if not Path(source).exists():
                raise FileNotFoundError(family.missing_reference(role, path))
            references[role] = load_reference(source)
        self.family = family(cfg, section, data.format, self.device, references)
        self.model = self.family.model
        if cfg.recompute and not recompute_blocks(self.model):
            raise ValueError(f"recompute=true: model {cfg.model!r} has no repeated blocks to recompute")
        if cfg.recompute_attention and not recompute_attention(self.model):
            raise ValueError(f"recompute_attention=true: model {cfg.model!r} has no token attention to recompute")
        self.noise_rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        self.dtype = {"auto": torch.bfloat16 if self.device.type == "cuda" else None, "fp32": None,
                      "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
        # channels-last activations: the fast convolution layout of tensor cores
        self.channels_last = self.device.type == "cuda" and data.kind == "image"
        self.family.prepare(data, Context(self.world, Path(cfg.out), self.dtype, self.autocast, self.channels_last,
                                          load_reference))
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # the strategy wraps (DDP) or shards in place (FSDP2) before the EMA and the optimizer
        # see the parameters, so under FSDP2 both hold shards; under bf16 FSDP2 gathers bf16
        # weights and reduces fp32 gradients (the 2/2/12 of ZeRO)
        wrapped = wrap(self.model, cfg.strategy, self.world, self.device,
                       param_dtype=torch.bfloat16 if self.dtype == torch.bfloat16 else None, sp=cfg.sp)
        self.optimizer = make_optimizer(self.model, cfg.strategy, self.world, self.device, cfg.lr, cfg.weight_decay)
        self.ema = EMA(self.model, cfg.ema_decay, gamma=cfg.ema_gamma)
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped
        self.scaler = make_grad_scaler(self.device, self.dtype == torch.float16, self.world.distributed)
        self.step = 0
        self.terms: dict = {}  # the named parts of the last micro-batch's loss, for the log
        # on a GPU the loop reads only the steps it logs, checkpoints or previews (a host sync each);
        # the CPU reads every step (a sync costs nothing there, and a bad step never touches the weights)
        self.defer_checks = self.device.type == "cuda"
        self.unread: tuple[torch.Tensor, torch.Tensor] | None = None  # (first bad step or -1, its values)

    def autocast(self):
        """The training steps' autocast context (bf16 on CUDA by default; off in fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None)

    @property
    def sharded(self) -> bool:
        """Whether this run keeps DTensor shards (zero2 / zero3 on several processes, or tp > 1)."""
        from ..distributed.strategy import is_sharded

        return is_sharded(self.world, self.cfg.strategy)

    def training_data(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The family's training data and labels on the device; images channels-last on CUDA."""
        data, labels = self.family.training_data()
        data = data.to(self.device)
        if self.channels_last:
            data = data.contiguous(memory_format=torch.channels_last)
        return data, labels.to(self.device) if labels is not None else None

    def train_step(self, data: torch.Tensor, labels: torch.Tensor | None,
                   read: bool = True) -> tuple[float, float] | None:
        """One optimizer step at `self.step`: `grad_accum` micro-batches (the batch is a pure
        function of the seed and the step; each rank takes its slice of every micro-batch),
        clipping, AdamW at `lr_at(step)`, one EMA update; with an active adversary, its step
        on the same micro-batches.  `read`: returns the global (loss, grad norm) with a single
        device sync, and raises FloatingPointError, on every rank and before touching the
        weights, on a non-finite loss or gradient norm (or for an earlier unread step that
        had one).  Unread (`read=False`): no host sync; the check is kept on the device for
        the next read (`check`), and None is returned."""
        from ..distributed.runtime import mean
        from ..distributed.strategy import clip_gradients, sync_gradients

        cfg, world, family = self.cfg, self.world, self.family
        adversary = family.active_adversary(self.step)
        optimizers = [self.optimizer] + ([family.adversary.optimizer] if family.adversary is not None else [])
        for optimizer in optimizers:  # one schedule
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        n, b = cfg.batch_size // cfg.grad_accum, self.micro_batch
        # the whole global batch's examples and random draws, the same on every rank: micro-batch k of
        # data-parallel rank r is rows k n + r b ... k n + (r + 1) b, whatever the accumulation and world size
        batch_idx = micro_batch_indices(len(data), cfg.batch_size, self.step, cfg.seed)
        if self.device.type == "cuda":  # one copy from pinned memory: a pageable copy would wait for the GPU
            batch_idx = batch_idx.pin_memory().to(self.device, non_blocking=True)
        draws = family.draw(cfg.batch_size, self.noise_rng)
        total = torch.zeros((), device=self.device)
        pairs = []  # (images, reconstructions) of each micro-batch, for the adversary
        for k in range(cfg.grad_accum):
            mine = slice(k * n + world.dp_rank * b, k * n + (world.dp_rank + 1) * b)
            idx = batch_idx[mine]
            batch, draw = Batch(data[idx], labels[idx] if labels is not None else None, idx), draws.slice(mine)
            with sync_gradients(self.forward, cfg.strategy, last=k == cfg.grad_accum - 1):
                with self.autocast():
                    out = family.loss(self.forward, batch, draw, self.step)
                self.terms = out.terms  # the last micro-batch's named parts, for the log
                self.scaler.scale(out.loss / cfg.grad_accum).backward()
            total += out.loss.detach().float() / cfg.grad_accum
            if adversary is not None:
                pairs.append((batch.x, out.reconstruction))
            family.after_micro_batch(draw, out)
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients before clipping (else a no-op)
        grad_norm = clip_gradients(self.model, cfg.grad_clip, world)
        d_total = d_norm = torch.zeros((), device=self.device)
        if adversary is not None:  # then the adversary (taming's second optimizer) on the same micro-batches
            d_total, d_norm = adversary.step(pairs)
        losses = mean(world, torch.stack([total, d_total]))
        stats = torch.cat([losses.float(), torch.stack([grad_norm.float(), d_norm.float()])])
        if read:
            loss_value, d_value, norm_value, d_norm_value = self.check(stats)
        else:
            self._keep_check(stats)
        self.scaler.step(self.optimizer)      # fp16: skipped when a gradient overflowed
        self.scaler.update()
        if adversary is not None:
            adversary.optimizer.step()
            self.terms = {**self.terms, **adversary.terms, "d_loss": d_value, "d_grad_norm": d_norm_value}
        self.ema.update(self.model)
        self.step += 1
        return (loss_value, norm_value) if read else None

    # --- the non-finite check ----------------------------------------------------------
    WATCHED = ("loss", "discriminator loss", "gradient norm", "discriminator gradient norm")

    def _watched(self) -> int:
        """How many of `WATCHED` stop the run: fp16's loss scaler skips a step whose gradients
        overflowed, so there only the losses do; elsewhere an infinite norm stops it too."""
        return 2 if self.scaler.is_enabled() else 4

    def _keep_check(self, stats: torch.Tensor) -> None:
        """An unread step's check, on the device: remember the first non-finite step and its values."""
        if self.unread is None:
            self.unread = (torch.full((), -1.0, dtype=torch.float64, device=stats.device),
                           torch.zeros(4, dtype=torch.float64, device=stats.device))
        first, values = self.unread
        new = ~torch.isfinite(stats[:self._watched()]).all() & (first < 0)
        self.unread = (torch.where(new, float(self.step), first), torch.where(new, stats.double(), values))

    def check(self, stats: torch.Tensor | None = None) -> list[float]:
        """Read this step's `stats` (loss, discriminator loss, gradient norms) and the kept
        checks of the unread steps before it, in one device sync; raise FloatingPointError
        for the first non-finite one.  Returns the stats as floats (none: just the check)."""
        parts = [] if stats is None else [stats.double()]
        if self.unread is not None:
            parts += [self.unread[0].reshape(1), self.unread[1]]
            self.unread = None
        if not parts:
            return []
        values = torch.cat(parts).tolist()
        now, kept = (values[:4], values[4:]) if stats is not None else ([], values)
        if kept and kept[0] >= 0:
            self._refuse(kept[1:], int(kept[0]), f" (found at step {self.step}: the steps between were checked "
                                                  "on the device and read together)")
        self._refuse(now, self.step)
        return now

    def _refuse(self, values: list[float], step: int, found: str = "") -> None:
        for which, value in zip(self.WATCHED[:self._watched()], values):
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite {which} ({value}) at step {step}{found}")

    # --- checkpoints -----------------------------------------------------------------
    def save(self) -> Path | None:
        """Write a checkpoint (every rank calls it).  Sharded runs write their shards from
        every rank (`distributed/sharded.py`, unless sharded_checkpoints=False); otherwise
        the whole state is gathered and rank 0 writes it.  Either way any world size
        resumes it.  Returns the path on rank 0."""
        from ..distributed import sharded
        from ..distributed.state import full_state

        self.check()  # never a checkpoint of weights that an unread non-finite step touched
        cfg = self.cfg
        state = {"config": cfg.identity(), "run_config": cfg.to_dict(), "world_size": self.world.size,
                 "strategy": cfg.strategy, "ema_updates": self.ema.num_updates,
                 "model_config": dataclasses.asdict(self.model.config),
                 "data": self.family.data.to_dict()}
        tensors = {"rng": {"noise": self.noise_rng.get_state(), "torch_cpu": torch.get_rng_state()}}
        if self.scaler.is_enabled():  # fp16's loss scale and its growth counter
            state["grad_scaler"] = {k: float(v) if isinstance(v, torch.Tensor) else v
                                    for k, v in self.scaler.state_dict().items()}
        extra_tensors, extra_state = self.family.checkpoint(self.ema)
        tensors.update(extra_tensors)
        state.update(extra_state)
        staged = None
        if self.sharded and cfg.sharded_checkpoints:
            staged = staging_dir(cfg.out, self.step)
            if self.world.main:  # a folder left by a crash at this very step is stale
                shutil.rmtree(staged, ignore_errors=True)
                staged.mkdir(parents=True)
            torch.distributed.barrier()
            state.update(layout="sharded", parameters=[n for n, _ in self.model.named_parameters()],
                         optimizer=sharded.save(self.model, self.optimizer, self.ema, staged / sharded.SHARDS))
        else:
            whole = full_state(self.model, self.optimizer, self.ema, self.world, cfg.strategy)
            if whole is not None:
                model_sd, ema_sd, optim_sd = whole
                frozen = set(self.family.frozen_names())  # what a reference provides (a LoRA's base)
                model_sd = {k: v for k, v in model_sd.items() if k not in frozen}
                opt_tensors, state["optimizer"] = flatten_optimizer_state(optim_sd)
                tensors.update(model=model_sd, ema=ema_sd, optimizer=opt_tensors)
        path = save_checkpoint(cfg.out, self.step, tensors, state, staged=staged) if self.world.main else None
        if self.world.main:
            self.family.saved(Path(cfg.out), self.step, self.ema)
        if self.world.distributed:
            torch.distributed.barrier()  # nobody reads or overwrites a checkpoint half written
        return path

    def load(self, path) -> None:
        """Resume from a checkpoint folder (or a run directory's latest), written by any world
        size and layout; refuses one written by another config, naming the keys."""
        from ..distributed import sharded
        from ..distributed.state import check_same_checkpoint, load_full_state, split_fused_state
        path = resolve_checkpoint(path)
        tensors, state = load_checkpoint(path)
        saved, mine = TrainConfig.from_dict(upgrade(state.get("config") or {})).identity(), self.cfg.identity()
        if saved != mine:
            flat = {**saved, **saved.pop("family_config")}, {**mine, **mine.pop("family_config")}
            keys = sorted(k for k in set(flat[0]) | set(flat[1]) if flat[0].get(k) != flat[1].get(k))
            raise CheckpointError(f"checkpoint {path} was written by another config; differing keys: {keys}")
        check_same_checkpoint(self.world, path, state)
        # shards written before q, k, v were separate modules are read whole and split
        if state.get("layout") == "sharded" and self.sharded and not sharded.holds_fused_projections(state):
            sharded.load(self.model, self.optimizer, self.ema, path, state["optimizer"])
            self.ema.num_updates = state["ema_updates"]
        else:
            if state.get("layout") == "sharded":
                model_sd, ema_sd, optim_sd = sharded.read_whole(path, state)
            else:
                model_sd, ema_sd = tensors["model"], tensors["ema"]
                optim_sd = unflatten_optimizer_state(tensors["optimizer"], state["optimizer"])
            model_sd = with_frozen(self.model, model_sd, self.family.frozen_names(), f"checkpoint {path}")
            try:
                model_sd, ema_sd, optim_sd = split_fused_state(model_sd, ema_sd, optim_sd,
                                                               [n for n, _ in self.model.named_parameters()])
                load_full_state(self.model, self.optimizer, self.ema, self.world, self.cfg.strategy, model_sd,
                                ema_sd, optim_sd, state["ema_updates"])
            except (RuntimeError, ValueError, KeyError) as e:  # tensors of another shape or name
                raise CheckpointError(f"checkpoint {path} does not fit this run's network: "
                                      f"{str(e).splitlines()[0]}") from e
        self.noise_rng.set_state(tensors["rng"]["noise"])
        torch.set_rng_state(tensors["rng"]["torch_cpu"])
        if self.scaler.is_enabled() and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        self.family.restore(tensors, state)
        self.step = state["step"]

    # --- previews --------------------------------------------------------------------
    @torch.no_grad()
    def write_preview(self, path: Path) -> Path | None:
        """A grid of the family's preview (EMA weights), written by rank 0.  Sharded (FSDP2)
        models sample on every rank with the weights gathered; otherwise rank 0 alone."""
        from ..distributed.strategy import gathered

        if not (self.world.main or self.sharded):
            torch.distributed.barrier()
            return None
        self.model.eval()
        with self.ema.applied(self.model), gathered(self.model):
            x = self.family.preview(self.cfg.num_samples)
        self.model.train()
        written = None
        if self.world.main:
            path.parent.mkdir(parents=True, exist_ok=True)
            written = self.family.write_preview(x, path, self.step)
        if self.world.distributed:
            torch.distributed.barrier()
        return written


def make_grad_scaler(device: torch.device, fp16: bool, distributed: bool) -> torch.amp.GradScaler:
    """Dynamic loss scaling for fp16 (Micikevicius et al. 2018): fp16's smallest normal is
    6e-5, so small gradients would flush to zero; the loss is multiplied by a scale before
    backward, the gradients divided by it before clipping, and a step whose gradients
    overflowed is skipped and the scale halved.  bf16 has fp32's exponent range and needs
    none, so the scaler is disabled there (every call a no-op).  On several processes the
    sharded scaler agrees on "overflowed" across ranks (ZeRO / FSDP2 ranks hold different
    gradient shards)."""
    if distributed:
        import warnings

        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        # its (1,)-shaped overflow flag meets FSDP2's DTensor gradients, which warn about it on every step
        warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1", category=UserWarning)
        return ShardedGradScaler(device.type, enabled=fp16)
    return torch.amp.GradScaler(device.type, enabled=fp16)
