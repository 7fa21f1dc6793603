"""Keep freed heap memory mapped for reuse instead of handing it back to the kernel.

Draining a backlog decompresses tens of MB per second into short-lived payloads of tens
of KB each, which glibc serves from its heap (they are under its mmap threshold). glibc
returns the heap's free top to the kernel as soon as it passes 128 KiB
(`M_TRIM_THRESHOLD`), so every publish window's payloads landed on fresh pages the kernel
had to fault in and zero: on the drain benchmark that was about a quarter of the agent's
time (docs/benchmarks.md). Raising the threshold keeps up to `limit` bytes of freed heap
for the next window; the agent's resident memory can stay that much higher after a drain.

No library wraps `mallopt`; ctypes is the usual way to call it. Other C libraries (musl)
have no such knob, and then this does nothing.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>

# Three publish windows of at most 8 MiB each are in flight, plus nats-py's copies.
DEFAULT_RETAINED = 64 << 20


def retain_freed_heap(limit: int = DEFAULT_RETAINED) -> bool:
    """Raise glibc's trim threshold to `limit` bytes for this process; False if this C
    library has no `mallopt`."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_TRIM_THRESHOLD, limit))
    if not done:
        log.debug("mallopt(M_TRIM_THRESHOLD) refused; heap trimming left as it is")
    return done


def release_freed_heap() -> bool:
    """Hand the heap's free memory back to the kernel now (glibc `malloc_trim(0)`): after
    forgetting many series the agent's RSS returns near its size before them, which the
    retention above would otherwise keep. False if this C library has no `malloc_trim`."""
    gc.collect()  # what cycles hold goes back too
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = (ctypes.c_size_t,)
    trim.restype = ctypes.c_int
    return bool(trim(0))


_ALLOCATOR_ENV = "PYTHONMALLOC"


def use_system_allocator() -> None:
    """Re-execute this process (same pid, same arguments) with `PYTHONMALLOC=malloc`,
    unless the variable is set already (then as the operator chose).

    Why: Python's own small-object allocator returns memory to the system only by whole
    1 MiB arenas, and one live object pins an arena. After a flood of 100,000 device
    names was forgotten, a few objects allocated meanwhile kept 60 MB of arenas (RSS
    71 -> 137 MB, measured in tests/chaos/test_device_flood.py). With glibc's malloc the
    freed memory goes back by pages (`release_freed_heap`): 71 -> within 10 %. The
    interpreter reads the variable only at start, hence the exec, before anything opens."""
    if _ALLOCATOR_ENV in os.environ or not hasattr(os, "execv"):
        return
    os.environ[_ALLOCATOR_ENV] = "malloc"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
