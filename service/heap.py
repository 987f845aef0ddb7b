"""Process-wide C heap policy: give large freed blocks back to the operating system.

glibc serves allocations above a *dynamic* mmap threshold from the heap, and it raises that
threshold (up to 32 MB) each time a large mmap'd block is freed. After the first few windows
every per-window buffer (a 96^3 window's logits are 53 MB, ONNX Runtime's activations similar)
comes from the heap, and freed heap memory mostly stays in the process. Pinning the threshold at
1 MB keeps such buffers on mmap, so freeing them returns the pages: the peak RSS of one CPU case
(example_ct_sm, tiny network) went from 895 to 847 MB at the same speed, and the resident
memory between cases drops back instead of ratcheting up.

Called once by the command-line entry points; a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_THRESHOLD_BYTES = 1 << 20


def return_large_blocks_to_the_os() -> bool:
    """Fix glibc's mmap and trim thresholds at 1 MB; False (and nothing changed) elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no mallopt in the C library %r: heap policy unchanged", name)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(option, _THRESHOLD_BYTES) == 1 for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
    log.debug("glibc mmap/trim thresholds pinned at %d bytes: %s", _THRESHOLD_BYTES, ok)
    return ok
