#!/usr/bin/env bash
# Install the peers that the benchmarks compare against, into .venv (after scripts/setup.sh):
# denoising-diffusion-pytorch with the light packages it imports (einops, ema-pytorch,
# accelerate) for benchmarks/quality_per_minute.py, and normflows for
# benchmarks/flows_vs_normflows.py.  diffusers already comes with the dev extra.
#
# torchvision is deliberately left out (--no-deps): PyPI's torchvision is built for the
# CUDA torch, fails to import beside the CPU build ('operator torchvision::nms does not
# exist'), and, once installed, breaks `import diffusers` too.  GaussianDiffusion and Unet
# do not use it; the benchmark gives the package an empty stand-in.  Every install is
# constrained to the torch already in .venv, so nothing here can replace it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV_PY=.venv/bin/python
[ -x "$VENV_PY" ] || { echo "[setup_bench] run scripts/setup.sh first" >&2; exit 1; }
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$VENV_PY" -c 'import torch; print("torch==" + torch.__version__)' > "$constraints"
pip_install() { "$VENV_PY" -m pip install --quiet --disable-pip-version-check -c "$constraints" "$@"; }
pip_install --no-deps denoising-diffusion-pytorch normflows
pip_install einops "ema-pytorch>=0.4.2" accelerate
echo "[setup_bench] ready: $("$VENV_PY" -c 'import importlib.metadata as m; print(", ".join(f"{p} {m.version(p)}" for p in ("denoising-diffusion-pytorch", "normflows", "diffusers", "torch")))')"
