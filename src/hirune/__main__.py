"""`python -m hirune ...`: the same as the `hirune` command.  Under torchrun, `record`
writes a failing rank's traceback where the launcher reports it, naming the rank."""

import sys

from torch.distributed.elastic.multiprocessing.errors import record

from .cli import main

if __name__ == "__main__":
    sys.exit(record(main)())
