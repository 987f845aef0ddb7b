"""The C heap policy the command-line entry points set."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_blocks_leave_the_process():
    # A child process, so the policy and the measurement do not depend on this test process's heap.
    script = textwrap.dedent(
        """
        import ctypes, os, sys
        from service.heap import return_large_blocks_to_the_os

        def rss_mb():
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

        if sys.argv[1] == "on":
            assert return_large_blocks_to_the_os()
        libc = ctypes.CDLL(None)
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        # Free then reallocate 2 MB blocks: glibc's dynamic threshold moves them onto the heap.
        for _ in range(3):
            blocks = [libc.malloc(2 << 20) for _ in range(40)]
            for b in blocks:
                ctypes.memset(b, 1, 2 << 20)
            before = rss_mb()
            for b in blocks:
                libc.free(b)
        print(before - rss_mb())
        """
    )
    returned = {}
    for mode in ("on", "off"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
        returned[mode] = float(out.stdout.strip())
    assert returned["on"] > 60, returned  # all 80 MB go back to the OS with the policy ...
    assert returned["off"] < 40  # ... while glibc's default keeps most of them
