"""hirune.allocator: with freed memory kept, a UNet training step stops faulting fresh pages
after the first steps; glibc's default (HIRUNE_KEEP_FREED_MEMORY=0, the broken variant, in a
fresh process) keeps faulting thousands of pages every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hirune.allocator import keep_freed_memory

WORKLOAD = """
import json, resource, torch
from hirune.allocator import keep_freed_memory
from hirune.models import build_model
torch.set_num_threads(1)
applied = keep_freed_memory()
net = build_model("unet", size="tiny", in_channels=1)
x, t = torch.randn(8, 1, 28, 28), torch.full((8,), 500.0)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net(x, t).square().mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
result = {"applied": applied, "faults": faults}
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "confstr")
                                or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                                reason="glibc's mallopt")


def default_glibc() -> dict:
    """The workload in a fresh process that leaves glibc as it is."""
    env = {**os.environ, "HIRUNE_KEEP_FREED_MEMORY": "0"}
    code = WORKLOAD + "print(json.dumps(result))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_stops_the_page_faults_and_the_default_does_not():
    assert keep_freed_memory() and keep_freed_memory()          # in effect, and idempotent
    here = {}
    exec(WORKLOAD, here)                                         # this process keeps freed memory
    kept, default = here["result"], default_glibc()
    assert kept["applied"] and not default["applied"]
    assert max(kept["faults"][-2:]) < 1000                       # measured: 0 and 196
    assert min(default["faults"][-2:]) > 2000                    # measured: about 4,000 to 5,600
