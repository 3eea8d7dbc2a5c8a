"""The trainer keeps freed memory for reuse (ams/malloc.py): a buffer freed and allocated again is not
page-faulted anew. Counted in a fresh interpreter with getrusage's minor faults, not timed."""
import subprocess
import sys

import pytest

from ams.config import ConfigError
from ams.malloc import keep_freed_memory
from services.trainer.config import TrainerConfig

# 4 cycles of a training step's pattern: malloc four 12 MB buffers, write every page, free them; prints the
# minor faults of cycles 2–4
CYCLES = """
import ctypes, resource, sys
from ams.malloc import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 12 << 20
def cycle():
    buffers = [libc.malloc(size) for _ in range(4)]
    for p in buffers:
        ctypes.memset(p, 1, size)
    for p in buffers:
        libc.free(p)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(keep_mb: int) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CYCLES, str(keep_mb)], capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


def test_a_freed_buffer_is_reused_without_page_faults():
    pages = 3 * 4 * (12 << 20) // 4096             # 36 864: what cycles 2–4 fault in 4 KB pages if nothing is kept
    applied, kept = _faults(1024)
    assert applied == "True" and kept < pages // 20, kept
    # glibc's own policy: the first cycle's buffers are mmapped and unmapped on free; later ones come from the
    # heap, whose top is trimmed as soon as more than twice the largest freed mmap (24 MB) lies free there
    applied, default = _faults(0)
    assert applied == "False" and default > pages // 2, default


def test_zero_leaves_malloc_alone_and_the_limit_is_checked():
    assert keep_freed_memory(0) is False
    TrainerConfig(insecure=True, malloc_keep_mb=0).validate()
    with pytest.raises(ConfigError, match="AMS_MALLOC_KEEP_MB"):
        TrainerConfig(insecure=True, malloc_keep_mb=4096).validate()
