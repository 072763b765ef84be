"""torchrun worker of the golden runs on several processes: trains every run of families.py
into ROOT (argv[1]) one after the other in the same processes.  Not collected by pytest."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import RUNS, train_words  # noqa: E402


@record
def run() -> int:
    from hirune.cli import main

    # one process group for all the runs: torch hangs re-creating the default group in a
    # process whose earlier group built FSDP2 meshes, so the CLI's teardown is skipped here
    torch.distributed.destroy_process_group = lambda *args, **kwargs: None
    root = sys.argv[1]
    names = sys.argv[2:] or list(RUNS)
    for name in names:
        code = main(["train", *train_words(name, root, processes=2)])
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(run())
