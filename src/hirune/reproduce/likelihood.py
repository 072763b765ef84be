"""Likelihoods: normalizing flows' exact densities on the 2-D toys (RealNVP, Dinh et al. 2017;
MAF, Papamakarios et al. 2017), read against the true density and a fitted Gaussian.

A flow f maps data x to z = f(x) ~ N(0, I), so log p(x) = log N(f(x); 0, I) + log |det df/dx|:
the likelihood is exact, not a bound, provided the layers' log-determinants are right.  The
note checks that at every budget against the Jacobian autograd builds of the whole map, and
measures the held-out NLL against the two numbers that bracket it: the Gaussian fitted to
the training data (two moments; a density model must do better) and, on the Gaussian-mixture
toys, the true density's NLL of the same points (its entropy, to sampling error; no model
beats it in expectation).  Glow is hirune's flow for images only (its 1x1 convolutions mix
channels); the toys have RealNVP and MAF.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..playbook.report import Report, pyplot, save
from .runs import gaussian_nll, held_out, run_folder, train_preset, true_nll
from .sampling import one_thread

FLOW_KINDS = ("realnvp", "maf")
# budget -> (training steps, toys, held-out points, points whose Jacobian is checked, coupling networks' width)
FLOWS = {"tiny": (30, ("eight_gaussians",), 2000, 64, 16),
         "small": (1000, ("eight_gaussians", "gaussian_mixture", "two_moons"), 10000, 256, 128),
         "full": (3000, ("eight_gaussians", "gaussian_mixture", "two_moons"), 10000, 1024, 128)}


def normalizing_flows_note(budget: str) -> Report:
    """RealNVP and MAF trained with their toy presets (8 flow steps; `runs.train_preset`) on
    2-D toys: the held-out NLL (exact, change of variables) beside a fitted Gaussian's and the
    true density's, and the largest gap between the flow's log-determinant and the autograd
    Jacobian's log |det| (float64): the likelihood is exact only where that gap is rounding."""
    steps, toys, n, n_jacobian, hidden = FLOWS[budget]
    rows, results = [], {}
    with run_folder("normalizing-flows") as folder:
        for toy in toys:
            test, reference = held_out(toy, n)
            gaussian, truth = gaussian_nll(reference, test), true_nll(toy, test)
            for kind in FLOW_KINDS:
                preset = f"{kind}-{toy.replace('_', '-')}"
                run = train_preset(folder, preset, preset, steps,
                                   {"model_config": {"kind": kind, "steps": 8, "hidden": hidden}})
                with one_thread():
                    nll = run.nll(n)
                    gap = logdet_gap(run.model, test[:n_jacobian])
                results[f"{toy} {kind}"] = {"toy": toy, "kind": kind, "nll": nll["nll_nats"],
                                            "stderr": nll["nll_stderr"], "gaussian": gaussian, "true": truth,
                                            "logdet_gap": gap}
                rows.append([toy, kind, nll["nll_nats"], nll["nll_stderr"], gaussian,
                             "-" if truth is None else truth, gap])
    notes = [f"held-out NLL in nats of {n} test points (exact: change of variables), each flow {steps} steps of "
             f"its preset (8 flow steps, coupling networks {hidden} wide); fitted Gaussian: the mean and covariance "
             f"of {n} training points; true: the mixture's own density of the same points (only the mixture toys have "
             "one)",
             f"log-det gap: the largest |log |det df/dx| - the flow's log-determinant| over {n_jacobian} test points, "
             "the Jacobian built by autograd in float64: rounding, so the likelihood is exact"]
    for key, r in results.items():
        beats = "beats" if r["nll"] < r["gaussian"] else "does not beat"
        above = "" if r["true"] is None else f", {r['nll'] - r['true']:.3g} nats above the true density"
        notes.append(f"{key}: {r['nll']:.4g}, {beats} the fitted Gaussian ({r['gaussian']:.4g}){above}")
    data = {"results": results, "n": n, "train_steps": steps, "n_jacobian": n_jacobian}

    def plot(path):
        plt = pyplot()
        fig, axes = plt.subplots(1, len(toys), figsize=(4 * len(toys), 3.6), squeeze=False)
        for ax, toy in zip(axes[0], toys):
            mine = [results[f"{toy} {kind}"] for kind in FLOW_KINDS]
            ax.bar(range(len(FLOW_KINDS)), [r["nll"] for r in mine], yerr=[r["stderr"] for r in mine],
                   tick_label=list(FLOW_KINDS))
            ax.axhline(mine[0]["gaussian"], color="tab:red", ls=":", label="fitted Gaussian")
            if mine[0]["true"] is not None:
                ax.axhline(mine[0]["true"], color="grey", ls="--", label="true density")
            ax.set(title=toy, ylabel="held-out NLL (nats)")
            ax.legend(fontsize=8)
        save(fig, path)
    return Report("normalizing-flows", "normalizing flows on 2-D toys: exact held-out NLL (nats; lower is better)",
                  ["toy", "flow", "NLL", "+-", "fitted Gaussian", "true", "log-det gap"], rows, notes, data, plot)


def logdet_gap(flow, x: Tensor) -> float:
    """max over the points of |log |det J(x)| - logdet(x)|, J = df/dx built column by column by
    autograd (each point's z depends on that point alone), in float64; the flow is left in float32."""
    flow = flow.double().eval()
    try:
        x = x.double().clone().requires_grad_(True)
        z, logdet = flow.encode(x)
        jacobian = torch.stack([torch.autograd.grad(z[:, i].sum(), x, retain_graph=True)[0]
                                for i in range(z.shape[1])], dim=1)      # (B, D out, D in)
        return float((torch.linalg.slogdet(jacobian).logabsdet - logdet.detach()).abs().max())
    finally:
        flow.float()

