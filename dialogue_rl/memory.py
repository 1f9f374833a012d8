"""Process memory: resident size now and at peak, and handing freed heap pages back.

PyTorch on CPU allocates tensors with the C allocator. glibc keeps the pages of freed
chunks below its mmap threshold (up to 32 MiB a chunk) in its arenas, and a loop that
allocates tensors of changing shapes (rollouts of different lengths, minibatches of
different widths) leaves them fragmented: the resident size climbs from iteration to
iteration although the live tensors do not (pytorch/pytorch#41486). Measured on PPO in
the 15-turn maze (64 episodes an iteration): 1.57 GiB resident at an iteration's end of which
``malloc_trim(0)`` returned 0.75 GiB (with 0.32 GiB of tensors left, most of them dead
per-turn caches of a reference cycle fixed since in :mod:`dialogue_rl.rollout`). :func:`release_freed_memory`
is that call, made by loops at the boundary of an iteration; a no-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import sys
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
        return None


_MALLOC_TRIM = _find_malloc_trim()


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``); False when
    the C library has no such call. Costs a walk over the arenas (milliseconds)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _maxrss_mb() -> float:
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def rss_mb() -> float:
    """This process's resident set now (MiB): ``VmRSS`` on Linux, else the peak (``ru_maxrss``)."""
    now = _status_mb("VmRSS:")
    return now if now is not None else _maxrss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident set (MiB): ``VmHWM`` of ``/proc/self/status`` on Linux
    (reset by ``exec``, unlike ``ru_maxrss``, which a spawned child inherits from its
    parent), else ``ru_maxrss``."""
    peak = _status_mb("VmHWM:")
    return peak if peak is not None else _maxrss_mb()
