"""An honest quality metric without downloads: a small digit classifier trained here, its
weights shipped in the package, and the Frechet distance in its feature space.

FID needs Inception weights that cannot be fetched here.  Instead `DigitClassifier` (a
small CNN) is trained on the training split of each digit set (`python -m
hirune.metrics.evaluator --train DATASET` rewrites `hirune/assets/evaluator_<dataset>.safetensors`)
and the Frechet distance between Gaussians fitted to its penultimate features compares
generated images with the held-out test split (Heusel et al. 2017, with this network in
place of Inception).  Always read it beside the real-vs-real reference: the same distance
between two halves of real data, which is what sampling noise alone gives.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ASSET = "evaluator_{}.safetensors"
# domains of mnist5k (data.images) read by mnist5k's evaluator: the thick digits as they
# are, the inverted ones inverted back (x -> -x), so that its features are those it learned;
# a dataset of aspect-ratio buckets (mnist5k-aspect) read centred to 28 x 28 (`evaluator_view`)
DOMAINS = {"mnist5k-thick": ("mnist5k", False), "mnist5k-inverted": ("mnist5k", True),
           "mnist5k-brightness": ("mnist5k", False), "mnist5k-aspect": ("mnist5k", False)}
EVALUATED = ("digits", "mnist5k", *DOMAINS)


class DigitClassifier(nn.Module):
    """Two conv blocks and a 128-d feature layer; input (B, 1, S, S) in [-1, 1]."""

    def __init__(self, size: int, num_classes: int = 10, width: int = 32, features: int = 128, invert: bool = False):
        super().__init__()
        self.size, self.invert = size, invert  # invert: read -x (a domain of inverted images)
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.features = nn.Sequential(nn.Linear(2 * width * 16, features), nn.SiLU())
        self.head = nn.Linear(features, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.size or x.shape[1] != 1:
            raise ValueError(f"evaluator expects (B, 1, {self.size}, {self.size}) images, got {tuple(x.shape)}")
        return self.features(self.conv(-x if self.invert else x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))


def _asset_path(dataset: str) -> Path:
    return Path(str(resources.files("hirune") / "assets" / ASSET.format(dataset)))


def load_evaluator(dataset: str) -> DigitClassifier:
    """The shipped evaluator of `dataset` (digits, mnist5k, or a domain of mnist5k: its
    evaluator, reading inverted images inverted back), in eval mode on the CPU."""
    from safetensors.torch import load_file

    if dataset not in EVALUATED:
        raise ValueError(f"no evaluator for {dataset!r}; evaluators exist for {list(EVALUATED)}")
    dataset, invert = DOMAINS.get(dataset, (dataset, False))
    path = _asset_path(dataset)
    if not path.exists():
        raise FileNotFoundError(f"evaluator weights missing: {path}; rebuild them with "
                                f"`python -m hirune.metrics.evaluator --train {dataset}`")
    net = DigitClassifier(8 if dataset == "digits" else 28, invert=invert)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


@torch.no_grad()
def features_and_logits(net: DigitClassifier, images: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    feats, logits = [], []
    for i in range(0, len(images), batch):
        f = net.embed(images[i: i + batch].float().cpu().clamp(-1, 1))
        feats.append(f.double())
        logits.append(net.head(f))
    return torch.cat(feats), torch.cat(logits)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to the rows.

    tr (S_a S_b)^(1/2) is computed as the sum of square roots of the eigenvalues of the
    symmetric S_a^(1/2) S_b S_a^(1/2), which has the same spectrum (no complex sqrtm)."""
    mu_a, mu_b = a.double().mean(0).numpy(), b.double().mean(0).numpy()
    s_a, s_b = np.cov(a.double().numpy(), rowvar=False), np.cov(b.double().numpy(), rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def evaluator_view(net: DigitClassifier, dataset: str, images: Tensor) -> Tensor:
    """Images as the evaluator reads them: on a dataset of aspect-ratio buckets, any bucket's
    (or the 32 x 32 canvas') cropped or padded with background about the centre to the
    evaluator's size (`data.buckets.recentre`; the digits are centred, so only background
    goes); other datasets' images unchanged (a wrong size is refused by the evaluator)."""
    from ..data import dataset_buckets
    from ..data.buckets import recentre

    return recentre(images, (net.size, net.size)) if dataset_buckets(dataset) else images


class TestReference:
    """`dataset`'s evaluator with its test split's features computed once: the Frechet distance
    of any number of image sets against the same reference (what `evaluate_images` computes for
    one set), and the real-vs-real reference (each count's computed once).  `reference_of`
    keeps one per dataset for the process."""

    def __init__(self, dataset: str):
        from ..data import load_dataset

        self.dataset, self.net = dataset, load_evaluator(dataset)
        self.test = self.features(load_dataset(dataset, "test").images)[0]
        self._real_vs_real: dict[int, float] = {}

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(features, logits) of `images` in the evaluator's view."""
        return features_and_logits(self.net, evaluator_view(self.net, self.dataset, images))

    def frechet(self, images: Tensor) -> float:
        return frechet_distance(self.features(images)[0], self.test)

    def real_vs_real(self, n: int) -> float:
        """n training images (a seeded draw, at most the split) against the test split."""
        from ..data import load_dataset

        if n not in self._real_vs_real:
            train = load_dataset(self.dataset, "train").images
            pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:min(n, len(train))]
            self._real_vs_real[n] = self.frechet(train[pick])
        return self._real_vs_real[n]


@functools.lru_cache(maxsize=None)
def reference_of(dataset: str) -> TestReference:
    """`dataset`'s TestReference, built once per process: the shipped evaluator and the splits
    are constants of the install, and building it (the test split's features) costs as much as
    scoring 500 samples."""
    return TestReference(dataset)


def evaluate_images(dataset: str, images: Tensor, labels: Tensor | None = None) -> dict:
    """Frechet distance of `images` to the test split in evaluator features, the real-vs-real
    reference (train-split images vs test split, same count), and, given the intended
    `labels`, the evaluator's accuracy on them (class-conditional samples)."""
    reference = reference_of(dataset)
    f_gen, logits = reference.features(images)
    out = {"frechet_distance": frechet_distance(f_gen, reference.test),
           "frechet_real_vs_real": reference.real_vs_real(len(images)),
           "num_images": len(images)}
    counts = torch.bincount(logits.argmax(1), minlength=10).double()
    out["class_entropy_bits"] = float(-(counts / counts.sum()).clamp(min=1e-12).log2().mul(counts / counts.sum()).sum())
    if labels is not None:
        out["class_accuracy"] = float((logits.argmax(1) == labels.cpu()).double().mean())
    return out


def train_evaluator(dataset: str, epochs: int = 8, seed: int = 0, out: Path | None = None) -> dict:
    """Train the evaluator on the training split (light augmentation: +-2 px shifts) and
    save it; returns its test accuracy."""
    from safetensors.torch import save_file

    from ..data import load_dataset

    torch.manual_seed(seed)
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    net = DigitClassifier(train.shape[-1])
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    x, y = train.images, train.labels
    steps = epochs * math.ceil(len(x) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    shift = 1 if train.shape[-1] <= 8 else 2
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = perm[i: i + 128]
            dx, dy = torch.randint(-shift, shift + 1, (2,)).tolist()
            xb = torch.roll(x[idx], shifts=(dx, dy), dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    _, logits = features_and_logits(net, test.images)
    accuracy = float((logits.argmax(1) == test.labels).double().mean())
    path = out or _asset_path(dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return {"dataset": dataset, "test_accuracy": accuracy, "path": str(path)}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="retrain the shipped digit evaluators")
    ap.add_argument("--train", choices=[d for d in EVALUATED if d not in DOMAINS], nargs="+", required=True)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args()
    for name in args.train:
        print(train_evaluator(name, args.epochs))
