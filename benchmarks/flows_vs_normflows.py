"""hirune's RealNVP against the `normflows` package's RealNVP on 2-D toys: held-out NLL at
the same size and training budget, in one run.

    bash scripts/setup_bench.sh     # installs normflows into .venv
    python benchmarks/flows_vs_normflows.py [--datasets two_moons eight_gaussians] [--steps 3000]

Both flows are built to the shape of hirune's `realnvp-<toy>` preset: 8 affine couplings
that alternate which coordinate they transform, each preceded by an ActNorm with
data-dependent initialisation, coupling networks 1 -> 128 -> 128 -> 2 (ReLU, zero-
initialised output), standard normal prior.  normflows is assembled the way its README
does it (`AffineCouplingBlock` + `Permute(mode="swap")`, its own `ActNorm` and `MLP`), so
its couplings use its default exp scale; hirune's use the tanh-bounded scale of RealNVP.

Training is one shared loop for both (so only the flows differ): the same data order,
AdamW at 1e-3 with hirune's warm-up + cosine schedule, gradient clipping at 1, EMA 0.999,
batch 256, `--steps` steps.  Reported: test NLL in nats (10 000 held-out points, EMA
weights, the mean over `--seeds`) beside a fitted Gaussian and, where the toy is a
Gaussian mixture, the true entropy (the floor; both baselines are `hirune.reproduce.runs`'s,
which `hirune reproduce normalizing-flows` reads hirune's own flows against), plus parameters
and milliseconds per training step.
Writes OUT/flows_vs_normflows.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from hirune.data import load_dataset
from hirune.models.normalizing_flow import Flow, FlowConfig
from hirune.reproduce.runs import gaussian_nll, true_nll
from hirune.training.ema import EMA
from hirune.training import TrainConfig, lr_at, micro_batch_indices

STEPS_PER_FLOW, HIDDEN = 8, 128


def hirune_realnvp() -> nn.Module:
    return Flow(FlowConfig(kind="realnvp", shape=(2,), steps=STEPS_PER_FLOW, hidden=HIDDEN))


class NormflowsRealNVP(nn.Module):
    """normflows' RealNVP for 2-D data as its README builds it (flows listed z -> x)."""

    def __init__(self):
        super().__init__()
        import normflows as nf

        flows = []
        for _ in range(STEPS_PER_FLOW):
            net = nf.nets.MLP([1, HIDDEN, HIDDEN, 2], init_zeros=True)
            flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(2, mode="swap"), nf.flows.ActNorm(2)]
        self.flow = nf.NormalizingFlow(nf.distributions.base.DiagGaussian(2, trainable=False), flows)

    def log_prob(self, x):
        return self.flow.log_prob(x)


def train_flow(model: nn.Module, data: torch.Tensor, steps: int, seed: int) -> tuple[EMA, float]:
    """The shared loop; returns the EMA and the mean wall-clock milliseconds per step."""
    cfg = TrainConfig(steps=steps, lr=1e-3, warmup=100, batch_size=256)
    torch.manual_seed(seed)
    with torch.no_grad():  # data-dependent ActNorm initialisation on one fixed batch
        model.log_prob(data[torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:512]])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    ema = EMA(model, 0.999)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        x = data[micro_batch_indices(len(data), cfg.batch_size, step, seed)]
        loss = -model.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model)
        if not math.isfinite(loss.item()):
            return ema, float("nan")
    return ema, 1000 * (time.perf_counter() - start) / steps


@torch.no_grad()
def test_nll(model: nn.Module, ema: EMA, test: torch.Tensor) -> float:
    with ema.applied(model):
        return float(-torch.cat([model.log_prob(b) for b in test.split(2000)]).mean())


def format_table(rows: list[dict]) -> str:
    lines = ["| dataset | hirune RealNVP | normflows RealNVP | fitted Gaussian | true entropy | ms/step hirune / normflows |",
             "|---|---|---|---|---|---|"]

    def cell(r, label):
        seeds = r[f"{label}_seeds"]
        finite = [v for v in seeds if math.isfinite(v)]
        text = f"{r[label]:.3f}"
        if len(finite) > 1:
            text += f" (seeds {min(finite):.3f} to {max(finite):.3f})"
        if len(finite) < len(seeds):
            text += f", {len(seeds) - len(finite)} of {len(seeds)} seeds diverged (NaN)"
        return text

    def ms(v):
        return f"{v:.2f}" if math.isfinite(v) else "-"

    for r in rows:
        truth = f"{r['true_entropy']:.3f}" if "true_entropy" in r else "-"
        lines.append(f"| {r['dataset']} | {cell(r, 'hirune')} | {cell(r, 'normflows')} | {r['gaussian']:.3f} | "
                     f"{truth} | {ms(r['hirune_ms'])} / {ms(r['normflows_ms'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["two_moons", "eight_gaussians"])
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", default="bench_out/flows")
    p.add_argument("--table", action="store_true", help="reprint the table of OUT/flows_vs_normflows.json")
    args = p.parse_args(argv)
    if args.table:
        print(format_table(json.loads((Path(args.out) / "flows_vs_normflows.json").read_text())))
        return 0
    try:
        import normflows
    except ImportError:
        print("normflows is not installed: run `bash scripts/setup_bench.sh` first")
        return 1
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, normflows {normflows.__version__}, {args.steps} steps x 256")
    rows = []
    for name in args.datasets:
        train, test = load_dataset(name, "train").data.float(), load_dataset(name, "test").data.float()
        row = {"dataset": name, "gaussian": gaussian_nll(train, test)}
        if true_nll(name, test) is not None:   # the Gaussian-mixture toys: the true density's NLL
            row["true_entropy"] = true_nll(name, test)
        for label, build in (("hirune", hirune_realnvp), ("normflows", NormflowsRealNVP)):
            nlls, ms = [], []
            for seed in args.seeds:
                torch.manual_seed(seed)  # the initialisation too
                model = build()
                ema, per_step = train_flow(model, train, args.steps, seed)
                nlls.append(test_nll(model, ema, test))
                ms.append(per_step)
            finite = [i for i, v in enumerate(nlls) if math.isfinite(v)]  # a diverged seed is reported apart
            row[label] = sum(nlls[i] for i in finite) / len(finite) if finite else float("nan")
            row[f"{label}_seeds"] = nlls
            row[f"{label}_ms"] = sum(ms[i] for i in finite) / len(finite) if finite else float("nan")
            row[f"{label}_params"] = sum(q.numel() for q in model.parameters())
            print(f"{name:16s} {label:10s} test NLL {row[label]:.4f} nats, seeds {[round(v, 4) for v in nlls]}  "
                  f"({row[f'{label}_ms']:.2f} ms/step, "
                  f"{row[f'{label}_params']} parameters)", flush=True)
        rows.append(row)
    table = format_table(rows)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flows_vs_normflows.md").write_text(table + "\n")
    (out / "flows_vs_normflows.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
