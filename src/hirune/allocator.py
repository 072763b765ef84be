"""The C allocator, set up for numeric work on the CPU: freed memory is kept for reuse.

glibc serves a large allocation (above a threshold that starts at 128 KiB and rises with
the largest block freed so far) with its own mmap, and hands the pages back to the kernel
when the block is freed; free memory above 128 KiB at the top of the heap is handed back
too.  A training step frees its activations and allocates them again in the next step,
so every step touches fresh pages: the kernel zeroes each 4 KiB page on its first touch, a
fault that is dear in a virtual machine.  The pixel UNet's step at batch 64 took about
40,000 such faults (160 MB) a step on a 2-core VM; with freed memory kept, none after the
first steps, and the step is about 10% faster.

`keep_freed_memory()` raises the mmap threshold to glibc's largest (32 MiB: every
allocation below it comes from the heap and is reused) and puts the trim threshold out
of reach, so the heap keeps what it has.  The process then holds its peak memory until it
exits (as PyTorch's caching allocator does on CUDA).  It is process-wide and once only:
the trainer calls it for CPU runs and the hirune command for every subcommand.  glibc on
Linux only (elsewhere, and with HIRUNE_KEEP_FREED_MEMORY=0, it does nothing); PyTorch's
tuning guide reaches the same end by preloading jemalloc or tcmalloc, which this does not
need.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20   # glibc's most (HEAP_MAX_SIZE / 2 on 64-bit); a larger value is refused
TRIM_THRESHOLD = 2**31 - 1   # (mallopt takes a C int) trim only beyond 2 GiB free at the top
TOP_PAD = 64 << 20          # grow the heap 64 MiB at a time

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory (see the module docstring); True where it
    is in effect.  Idempotent; does nothing off glibc or with HIRUNE_KEEP_FREED_MEMORY=0."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and os.environ.get("HIRUNE_KEEP_FREED_MEMORY", "1") != "0":
            libc = ctypes.CDLL(None)
            if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt"):
                _applied = all(libc.mallopt(option, value) == 1 for option, value in
                               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                                (M_TOP_PAD, TOP_PAD)))
    return _applied
