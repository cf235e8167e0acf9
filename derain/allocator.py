"""Keep freed memory in the process on glibc, so each forward pass stops paying page faults.

A forward pass allocates activation buffers of tens of megabytes and frees them again. By
default glibc serves such blocks with ``mmap`` and gives them back to the system on ``free``, so
the next pass (or tile, or photo) faults every page in again: millions of minor page faults per
photo, a third of the CPU time on two cores. Telling glibc to serve them from its heap and never
trim it keeps the pages mapped and reused. The price is that the process keeps its peak memory
until it exits, which the tiled engine bounds anyway.

Other C libraries (macOS, Windows, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: (parameter, value): no mmap-served blocks at all, and never trim the heap's top.
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))


def _glibc() -> ctypes.CDLL | None:
    """The running process's glibc, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it; musl would raise AttributeError
        return libc
    except (OSError, AttributeError):
        return None


@functools.cache
def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` once per process; True when glibc accepted all of them."""
    libc = _glibc()
    if libc is None:
        return False
    return all(libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) == 1 for param, value in SETTINGS)
