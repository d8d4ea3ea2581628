"""Keep freed memory inside the process (Linux, glibc), set once where a process starts.

Inference allocates and frees the same large tensors tile after tile and chunk after chunk.
By default glibc hands every block over 32 MB straight back to the OS (mmap) and trims the
heap whenever its free top exceeds a few hundred kB, so each reuse page-faults the memory in
again: a large share of a CPU run's time (docs/benchmark.md). With these settings malloc serves
large blocks from the heap and does not trim it; the memory goes back to the OS when the
process ends.

It changes the allocator for the whole process, so no library call applies it: the command line
does for the commands that run inference (:func:`retain_freed_memory`), and the Slicer module
starts its worker with the same settings in the environment (:func:`environment`), which glibc
reads at start-up. Elsewhere (Windows, macOS, musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import platform
import sys
from functools import lru_cache

#: mallopt parameter -> (the environment variable glibc reads it from, the retained value)
_RETAIN = {
    -1: ("MALLOC_TRIM_THRESHOLD_", 2**31 - 1),  # M_TRIM_THRESHOLD: never trim the heap's top
    -2: ("MALLOC_TOP_PAD_", 64 * 2**20),  # M_TOP_PAD: grow the heap in large steps
    -4: ("MALLOC_MMAP_MAX_", 0),  # M_MMAP_MAX: large blocks from the heap, not mmap
}


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the only one whose tunables are set here)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def retain_freed_memory() -> bool:
    """Keep freed memory for reuse for the rest of this process (see the module docstring);
    whether the settings were applied (glibc only)."""
    libc = _glibc()
    if libc is None:
        return False
    for param, (_name, value) in _RETAIN.items():
        libc.mallopt(ctypes.c_int(param), ctypes.c_int(value))
    return True


def environment() -> dict[str, str]:
    """The same settings as environment variables for a process about to start (empty where
    the C library is not glibc)."""
    if _glibc() is None:
        return {}
    return {name: str(value) for name, value in _RETAIN.values()}
