"""Giving freed memory back to the operating system.

A governor's start with a large registry is a burst: the config's swarms decoded, a ledger entry and a witness
record each, encoded, published and stored. Once that is over the memory is free, but glibc's allocator keeps most
of it (the process's RSS stays near the burst's peak: about 70 MiB more than the registry needs with 100,000 swarms)
until `malloc_trim` hands it back. Other C libraries have no such call: there this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system (glibc); False where the C library cannot."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True
