"""Keep freed memory inside the process for the length of a run (Linux, glibc).

Inference allocates and frees the same large tensors tile after tile and chunk after chunk.
By default glibc hands every block over 32 MB straight back to the OS (mmap) and trims the
heap whenever its free top exceeds a few hundred kB, so each reuse page-faults the memory in
again: on this project's 2-core benchmark machine that was a third of an int8 run and a
fifth of an fp32 one (docs/benchmark.md). Inside :func:`retained_heap` malloc serves large
blocks from the heap and does not trim it; on the way out the settings return to glibc's
defaults and the heap is trimmed, so the memory goes back to the OS once the run is over.

Elsewhere (Windows, macOS, musl) this is a no-op: nothing else is assumed about the allocator.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

# mallopt parameters and glibc's documented defaults (man 3 mallopt)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024, _M_MMAP_MAX: 65536}
_RETAIN = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_TOP_PAD: 64 * 2**20, _M_MMAP_MAX: 0}

_lock = threading.Lock()
_depth = 0


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (the only one whose mallopt is used here)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _apply(libc: ctypes.CDLL, settings: dict[int, int]) -> None:
    for param, value in settings.items():
        libc.mallopt(ctypes.c_int(param), ctypes.c_int(value))


@contextmanager
def retained_heap() -> Iterator[None]:
    """Run the block with freed memory kept for reuse (see the module docstring); nested and
    concurrent uses keep it until the last one ends."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _apply(libc, _RETAIN)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _apply(libc, _DEFAULTS)
                libc.malloc_trim(ctypes.c_size_t(0))
