"""Keep freed memory in the process for reuse (glibc malloc), so training does not page-fault every step.

A training iteration allocates and frees the same activation and gradient buffers, tens of MB each, every
step. glibc's malloc serves a block above its mmap threshold (128 KB, raised on the fly up to 32 MB) with a
fresh mmap and returns it to the kernel when freed, and trims the top of the heap whenever more than
128 KB is free there; the next iteration then page-faults every page of those buffers again, zero-filled
by the kernel. With the mmap threshold fixed at its largest (32 MB) and a trim threshold of `keep_mb`,
the buffers are reused instead: one batch-4 iteration at 144×256 takes ≈ 10 % less on one core of our
box, and the first strided depthwise convolution's backward 4.3 instead of 8.8–12 ms
(docs/benchmarks.md). The cost: the process keeps up to `keep_mb` of freed heap resident.
Blocks above 32 MB (at 256×512) are still mmapped and faulted anew.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # <malloc.h>
MMAP_THRESHOLD_MAX = 32 << 20                    # glibc's limit on 64-bit (4 MiB × sizeof(long))


def keep_freed_memory(keep_mb: int) -> bool:
    """Set glibc's thresholds as above (keep_mb ≤ 0: leave malloc as it is). False where the C library is not
    glibc (musl, macOS): nothing changes there."""
    if keep_mb <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("malloc: no mallopt in this C library; freed memory goes back to the kernel as before")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # both, or neither: setting either one turns off glibc's raising of the mmap threshold on the fly
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, keep_mb << 20) == 1
    if ok:
        log.info("malloc: up to %d MB of freed memory kept for reuse (AMS_MALLOC_KEEP_MB)", keep_mb)
    else:
        log.warning("malloc: mallopt refused the thresholds; freed memory goes back to the kernel as before")
    return ok
