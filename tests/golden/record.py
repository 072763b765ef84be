"""Record the golden runs (see families.py):  python tests/golden/record.py [OUT]

Trains every family's short run on one process (here, one thread) and on two gloo processes
(torchrun, through dist_train.py), reads each back through `hirune sample / eval / invert`,
and writes OUT (default tests/golden/v0): the run directories (checkpoints, config, metrics;
previews as pixel hashes), the read-back arrays and JSON, and the environment they came
from.  Run once, at the commit the golden files name; never again over them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from families import RUNS, checkpoint_hashes, cli, environment, pixels_sha, read_back, train_words  # noqa: E402


def main() -> None:
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "v0"
    if dest.exists():
        raise SystemExit(f"{dest} exists: the golden files are recorded once")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="hirune-golden-"))
    os.chdir(work)
    (work / "readback").mkdir()
    for name in RUNS:
        cli(["train", *train_words(name)])
    printed = read_back("runs", RUNS, "readback")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    str(HERE / "dist_train.py"), "runs2"], check=True, env=env)
    (work / "readback2").mkdir()
    printed2 = read_back("runs2", ["vpred", "iddpm", "dit", "uvit"], "readback2")
    previews = {}
    for root in ("runs", "runs2"):
        for png in sorted(work.glob(f"{root}/*/samples/*.png")):
            previews[png.relative_to(work).as_posix()] = pixels_sha(png)
            png.unlink()
    for png in work.glob("readback*/*.png"):
        previews[png.relative_to(work).as_posix()] = pixels_sha(png)
        png.unlink()
    # the two-process runs: their tensors as hashes (the one-process runs keep their files)
    hashes2 = {p.name: checkpoint_hashes(p) for p in sorted((work / "runs2").iterdir())}
    for f in work.glob("runs2/*/checkpoints/*/**/*.safetensors"):
        f.unlink()
    meta = {"commit": subprocess.run(["git", "-C", str(HERE), "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
            **environment(), "threads": 1, "previews": previews, "evaluations": printed, "evaluations2": printed2,
            "checkpoints2": hashes2}
    (work / "golden.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    shutil.copytree(work, dest)
    print(f"recorded into {dest}")


if __name__ == "__main__":
    main()
