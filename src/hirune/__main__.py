"""`python -m hirune ...`: the same as the `hirune` command.  Under torchrun, `record`
writes a failing rank's traceback where the launcher reports it, naming the rank, and a
worker that returns leaves through `distributed.runtime.leave` (no interpreter teardown)."""

from torch.distributed.elastic.multiprocessing.errors import record

from .cli import main
from .distributed.runtime import leave

if __name__ == "__main__":
    leave(record(main)())
