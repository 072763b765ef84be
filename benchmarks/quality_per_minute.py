"""Quality per CPU-minute on MNIST 5k: hirune's default model against three peer recipes.

Every contestant gets the same wall-clock training budget on this machine (default 10
minutes, all cores torch uses by default), then draws 1000 samples, and all are scored by
the same metric: the Frechet distance in hirune's shipped evaluator features against the
500 held-out test digits (`hirune.metrics.evaluator.evaluate_images`), printed beside the
real-vs-real reference, with the entropy of the predicted classes (3.32 bits = all ten
digits equally often).

Contestants
  hirune         hirune's pixel recipe (preset vpred-mnist5k, the main job before it became
                 latent: 1.6 M-parameter UNet, v-prediction, cosine betas, min-SNR-5, AdamW
                 2e-3, 100 warm-up steps, cosine decay, EMA 0.995, batch 64), its step count
                 set so the run fits the budget; sampled with DDIM-50, trailing spacing.
  tuned          a recipe built by hand from diffusers' parts for this CPU: UNet2DModel
                 (32, 64, 64), one ResNet block per level, no attention (1.06 M parameters),
                 DDPMScheduler (linear betas, epsilon), AdamW 2e-3 with 100 warm-up steps and
                 cosine decay, EMAModel(decay=0.995), batch 64, gradient clipping 1; its step
                 count set so the run fits the budget; sampled with DDIMScheduler, 50
                 trailing steps.
  tuned-cos      the same with the cosine beta schedule (squaredcos_cap_v2) in place of
                 the linear one: "cosine schedule" read as the noise schedule.
  diffusers      diffusers' unconditional-training example with its defaults: the 6-level
                 UNet2DModel (128..512 channels, 114 M parameters), AdamW 1e-4 (betas 0.95,
                 0.999, weight decay 1e-6), 500 warm-up steps then cosine over 100 epochs,
                 EMA 0.9999 with warm-up, batch 16, linear-beta DDPMScheduler, epsilon.  Its
                 UNet needs a side divisible by 32, so digits are padded 28 -> 32 with
                 background (its default resolution, 64, would be 4x slower still) and
                 samples are cropped back.  Sampled with DDIMScheduler (default spacing).
  dit, uvit      hirune's transformer backbones with the main job's recipe (v, cosine,
                 min-SNR, AdamW 1e-3): DiT (adaLN-Zero) and U-ViT (long skips), 128 wide with
                 4 x 4 patches (49 tokens), 1.57 M and 1.49 M parameters against the UNet's
                 1.62 M; same budget, same sampler.
  ldm, ldm-dit   latent diffusion with the same recipe on the 4 x 7 x 7 latents of the
                 kl-ae-mnist5k autoencoder (25.3 dB PSNR; trained once, outside the budget):
                 a UNet of 1.72 M parameters or a DiT with 1 x 1 patches (1.57 M).
  ddp            denoising-diffusion-pytorch's GaussianDiffusion with its defaults
                 (v-objective, sigmoid betas, 1000 steps) on its README's Unet(dim=64) with
                 dim_mults (1, 2, 4) (its default (1, 2, 4, 8) cannot halve 7 x 7), trained
                 with its Trainer's defaults (Adam 1e-4, betas 0.9, 0.99, batch 16, EMA 0.995
                 every 10 steps, clipping 1); sampled with its DDIM.

The two default-recipe peers take seconds per sample step on 2 cores (114 M and 9.9 M
parameters), so they sample with --default-peer-steps (default 10) DDIM steps: 1000 samples
at 50 steps would take them about an hour and 20 minutes.  After 10 minutes of training
at lr 1e-4 they are nowhere near digits at any step count; look at their grids.

    python benchmarks/quality_per_minute.py [--minutes 10] [--samples 1000] [--only hirune,tuned]

Peers: diffusers comes with the `dev` extra; denoising-diffusion-pytorch with
`bash scripts/setup_bench.sh` (its torchvision requirement is skipped: PyPI's torchvision
does not load beside the CPU build of torch, and GaussianDiffusion does not use it).
Results are merged into OUT/results.json and printed as a table; sample grids go to
OUT/<name>.png.
"""

from __future__ import annotations

import argparse
import copy
import importlib.machinery
import json
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from hirune.data import load_dataset
from hirune.metrics.evaluator import evaluate_images
from hirune.viz import image_grid


def _digits() -> torch.Tensor:
    return load_dataset("mnist5k", "train").images  # (4500, 1, 28, 28) in [-1, 1]


class Batches:
    """Shuffled epochs of the training digits, as a PyTorch DataLoader would give them."""

    def __init__(self, images: torch.Tensor, batch: int, seed: int = 0):
        self.images, self.batch = images, batch
        self.g = torch.Generator().manual_seed(seed)
        self.order, self.pos = torch.randperm(len(images), generator=self.g), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch > len(self.order):
            self.order, self.pos = torch.randperm(len(self.images), generator=self.g), 0
        idx = self.order[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.images[idx]


def seconds_per_step(make, batch: int, images: torch.Tensor, steps: int = 12, skip: int = 3) -> float:
    """Median time of a training step of a throwaway instance (warm-up steps skipped)."""
    trial, data, times = make(), Batches(images, batch, seed=1), []
    for i in range(steps):
        t0 = time.perf_counter()
        trial.step(data.next())
        if i >= skip:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_for(contestant, batch: int, images: torch.Tensor, budget: float, max_steps: int | None) -> tuple[int, float]:
    """Train until the budget is spent (or `max_steps` are done); returns (steps, seconds)."""
    from tqdm.auto import tqdm

    data, step, t0 = Batches(images, batch), 0, time.perf_counter()
    bar = tqdm(total=max_steps, desc="train", unit="step")
    while time.perf_counter() - t0 < budget and (max_steps is None or step < max_steps):
        contestant.step(data.next())
        step += 1
        bar.update(1)
    bar.close()
    return step, time.perf_counter() - t0


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- hirune

PIXEL_RECIPE = "vpred-mnist5k"  # the pixel UNet the peers' pixel recipes are compared with


def run_hirune(args, out: Path, preset: str | None = None, overrides: dict | None = None) -> dict:
    import shutil

    from hirune.reproduce.latent import steps_in
    from hirune.sampling import sample
    from hirune.training import load, preset_config, train
    name = preset or "hirune"
    preset = preset or PIXEL_RECIPE
    calib = out / f"{name}-calibration"
    shutil.rmtree(calib, ignore_errors=True)
    steps = steps_in(args.budget, preset, overrides or {}, calib, trial=12, skip=3)  # `hirune reproduce`'s calibration
    run_dir = out / f"{name}-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = preset_config(preset, {"out": str(run_dir), "steps": steps, "sample_every": 0, "eval_samples": 0,
                                 **(overrides or {})})
    t0 = time.perf_counter()
    train(cfg)
    train_s = time.perf_counter() - t0
    run = load(run_dir)
    t0 = time.perf_counter()
    with torch.no_grad():
        x = torch.cat([run.decode(sample(run.denoiser, (n, *run.sample_shape), "ddim", args.steps, "trailing",
                                         seed=i).x) for i, n in enumerate(_chunks(args.samples))])
    return {"recipe": f"hirune train {preset}", "params": _params(run.model), "batch": cfg.batch_size,
            "train_steps": steps, "train_s": train_s, "sampler": f"DDIM-{args.steps} trailing",
            "sample_s": time.perf_counter() - t0, "images": x}


def _chunks(n: int, size: int = 250) -> list[int]:
    return [min(size, n - i) for i in range(0, n, size)]


# ---------------------------------------------------------------- diffusers

class DiffusersTrainer:
    """One diffusers training step: noise, add_noise, epsilon MSE, clip 1, AdamW, LR, EMA."""

    def __init__(self, net, lr, betas, weight_decay, warmup, total, ema_kwargs, pad: int = 0, seed: int = 0,
                 beta_schedule: str = "linear"):
        from diffusers import DDPMScheduler
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        self.net, self.pad = net, pad
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=beta_schedule)
        self.opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, eps=1e-8)
        self.lr = get_cosine_schedule_with_warmup(self.opt, warmup, total)
        self.ema = EMAModel(net.parameters(), **ema_kwargs)
        self.g = torch.Generator().manual_seed(seed)

    def step(self, x0: torch.Tensor) -> None:
        x0 = F.pad(x0, (self.pad,) * 4, value=-1.0)
        noise = torch.randn(x0.shape, generator=self.g)
        t = torch.randint(0, 1000, (len(x0),), generator=self.g)
        loss = F.mse_loss(self.net(self.scheduler.add_noise(x0, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
        self.opt.step()
        self.lr.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.net.parameters())

    @torch.no_grad()
    def sample(self, n: int, steps: int, spacing: str, seed: int = 0) -> torch.Tensor:
        from diffusers import DDIMScheduler
        from tqdm.auto import tqdm

        net = copy.deepcopy(self.net).eval()
        self.ema.copy_to(net.parameters())
        ddim = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing=spacing)
        ddim.set_timesteps(steps)
        g, side, outs = torch.Generator().manual_seed(seed), 28 + 2 * self.pad, []
        for m in tqdm(_chunks(n), desc="sample"):
            x = torch.randn((m, 1, side, side), generator=g)
            for t in ddim.timesteps:
                x = ddim.step(net(x, t).sample, t, x).prev_sample
            outs.append(x[..., self.pad:side - self.pad, self.pad:side - self.pad])
        return torch.cat(outs)


def _tuned_net():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3)


def run_tuned(args, out: Path, beta_schedule: str = "linear") -> dict:
    batch, images = 64, _digits()

    def make(total=1000):
        return DiffusersTrainer(_tuned_net(), 2e-3, (0.9, 0.999), 0.0, 100, total, {"decay": 0.995},
                                beta_schedule=beta_schedule)

    steps = max(1, int(args.budget / seconds_per_step(make, batch, images)))
    trainer = make(total=steps)
    done, train_s = train_for(trainer, batch, images, args.budget * 1.05, steps)
    t0 = time.perf_counter()
    x = trainer.sample(args.samples, args.steps, "trailing")
    recipe = "diffusers parts, tuned for this CPU" + (", cosine betas" if beta_schedule != "linear" else "")
    return {"recipe": recipe, "params": _params(trainer.net), "batch": batch,
            "train_steps": done, "train_s": train_s, "sampler": f"DDIM-{args.steps} trailing",
            "sample_s": time.perf_counter() - t0, "images": x}


def run_diffusers_default(args, out: Path) -> dict:
    from diffusers import UNet2DModel

    batch, images = 16, _digits()
    torch.manual_seed(0)
    net = UNet2DModel(
        sample_size=32, in_channels=1, out_channels=1, layers_per_block=2,
        block_out_channels=(128, 128, 256, 256, 512, 512),
        down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
    epochs_steps = 100 * math.ceil(len(images) / batch)  # num_epochs=100 of the example script
    trainer = DiffusersTrainer(net, 1e-4, (0.95, 0.999), 1e-6, 500, epochs_steps,
                               {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75}, pad=2)
    done, train_s = train_for(trainer, batch, images, args.budget, None)
    t0 = time.perf_counter()
    x = trainer.sample(args.samples, args.default_peer_steps, "leading")
    return {"recipe": "diffusers train_unconditional defaults", "params": _params(net), "batch": batch,
            "train_steps": done, "train_s": train_s, "sampler": f"DDIM-{args.default_peer_steps} leading",
            "sample_s": time.perf_counter() - t0, "images": x}


# ---------------------------------------------------------------- denoising-diffusion-pytorch

def _import_ddp():
    """Import denoising_diffusion_pytorch; where torchvision is missing or does not load
    (PyPI's build beside the CPU torch), give it an empty stand-in: only its Trainer and
    Dataset use torchvision, and this benchmark uses neither."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [k for k in sys.modules if k.startswith("torchvision")]:
            del sys.modules[name]
        for name in ("torchvision", "torchvision.transforms", "torchvision.utils"):
            mod = types.ModuleType(name)
            mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = mod
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]
    import denoising_diffusion_pytorch

    return denoising_diffusion_pytorch


class DDPTrainer:
    """The training step of denoising-diffusion-pytorch's Trainer with its defaults."""

    def __init__(self, steps: int):
        ddp = _import_ddp()
        from ema_pytorch import EMA

        torch.manual_seed(0)
        self.unet = ddp.Unet(dim=64, dim_mults=(1, 2, 4), channels=1)
        self.diffusion = ddp.GaussianDiffusion(self.unet, image_size=28, timesteps=1000, sampling_timesteps=steps)
        self.opt = torch.optim.Adam(self.diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.ema = EMA(self.diffusion, beta=0.995, update_every=10)

    def step(self, x0: torch.Tensor) -> None:
        loss = self.diffusion((x0 + 1) / 2)  # it takes images in [0, 1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = self.ema.ema_model.eval()
        return torch.cat([model.sample(batch_size=m) * 2 - 1 for m in _chunks(n)])


def run_ddp(args, out: Path) -> dict:
    batch, images = 16, _digits()
    trainer = DDPTrainer(args.default_peer_steps)
    done, train_s = train_for(trainer, batch, images, args.budget, None)
    t0 = time.perf_counter()
    x = trainer.sample(args.samples)
    return {"recipe": "denoising-diffusion-pytorch defaults", "params": _params(trainer.unet), "batch": batch,
            "train_steps": done, "train_s": train_s, "sampler": f"DDIM-{args.default_peer_steps}",
            "sample_s": time.perf_counter() - t0, "images": x}


def run_tuned_cosine(args, out: Path) -> dict:
    return run_tuned(args, out, beta_schedule="squaredcos_cap_v2")


CONTESTANTS = {"hirune": run_hirune, "tuned": run_tuned, "tuned-cos": run_tuned_cosine,
               "diffusers": run_diffusers_default, "ddp": run_ddp,
               # hirune's transformer backbones at the UNet's size (presets dit-mnist5k, uvit-mnist5k)
               "dit": lambda args, out: run_hirune(args, out, "dit-mnist5k"),
               "uvit": lambda args, out: run_hirune(args, out, "uvit-mnist5k"),
               # latent diffusion on kl-ae-mnist5k's 4 x 7 x 7 latents (the autoencoder is trained
               # first, outside the budget, and its time reported)
               "ldm": lambda args, out: run_latent(args, out, "ldm-mnist5k"),
               "ldm-dit": lambda args, out: run_latent(args, out, "ldm-dit-mnist5k")}


def _available(name: str) -> str | None:
    try:
        if name in ("tuned", "tuned-cos", "diffusers"):
            import diffusers  # noqa: F401
        if name == "ddp":
            _import_ddp()
    except ImportError as e:
        return f"not installed ({e.name})"
    return None


def table(results: dict) -> str:
    rows = ["| contestant | recipe | params | steps x batch in train time | sampler | Frechet distance "
            "(real vs real) | class entropy (bits) |", "|---|---|---|---|---|---|---|"]
    for name in CONTESTANTS:
        r = results.get(name)
        if r is None:
            continue
        rows.append(f"| {name} | {r['recipe']} | {r['params'] / 1e6:.2f} M | {r['train_steps']} x {r['batch']} "
                    f"in {r['train_s'] / 60:.1f} min | {r['sampler']} | {r['frechet_distance']:.1f} "
                    f"({r['frechet_real_vs_real']:.1f}) | {r['class_entropy_bits'] + 0.0:.2f} |")
    tuned = [results[k]["frechet_distance"] for k in ("tuned", "tuned-cos") if k in results]
    if "hirune" in results and tuned:
        lead = min(tuned) / results["hirune"]["frechet_distance"]
        rows.append(f"\nhirune's Frechet distance is {lead:.1f}x lower than the best tuned diffusers recipe's.")
    return "\n".join(rows)


def run_latent(args, out: Path, preset: str) -> dict:
    from hirune.checkpoint import latest_checkpoint
    from hirune.training import preset_config, train

    ae = out / "kl-ae-mnist5k"
    t0 = time.perf_counter()
    if latest_checkpoint(ae) is None:
        train(preset_config("kl-ae-mnist5k", {"out": str(ae), "sample_every": 0}))
    r = run_hirune(args, out, preset, {"autoencoder": str(ae)})
    r["recipe"] += f" (+ kl-ae-mnist5k, trained once: {time.perf_counter() - t0 - r['train_s'] - r['sample_s']:.0f} s " \
                   "incl. encoding)"
    return r


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="training budget per contestant")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50, help="sampler steps (hirune, tuned)")
    p.add_argument("--default-peer-steps", type=int, default=10, help="sampler steps (diffusers, ddp defaults)")
    p.add_argument("--only", default=",".join(CONTESTANTS), help=f"comma list of {sorted(CONTESTANTS)}")
    p.add_argument("--out", default="bench_out/quality")
    args = p.parse_args(argv)
    args.budget = args.minutes * 60
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTESTANTS))
    if unknown:
        p.error(f"unknown contestant(s) {unknown}; valid: {sorted(CONTESTANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, budget {args.minutes:g} min")
    for name in names:
        missing = _available(name)
        if missing:
            print(f"{name}: skipped, {missing}")
            continue
        print(f"== {name}")
        r = CONTESTANTS[name](args, out)
        images = r.pop("images").float().clamp(-1, 1)
        image_grid(images[:64], out / f"{name}.png", nrow=8)
        r.update(evaluate_images("mnist5k", images))
        r["minutes"] = args.minutes
        results[name] = r
        print(json.dumps(r))
        results_path.write_text(json.dumps(results, indent=1))
    text = table(results)
    (out / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
