"""Handing freed heap back to the system after a one-off load.

Loading a large table allocates and frees far more than it keeps; glibc keeps the freed
memory in its arenas, where it counts in the process's RSS for good. ``malloc_trim``
returns it. Elsewhere than glibc this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_heap() -> None:
    trim = _trim()
    if trim is not None:
        trim(0)
