"""The C library, loaded once per process (ctypes), and what edgeworker asks of it beyond
Python: the kernel calls in `clock`, `wakeup` and `runners` use `libc()`, and both long-lived
processes (the worker, the status page) give freed heap memory back with the two functions here.
"""

from __future__ import annotations

_LIBC: list = []


def libc():
    """The C library; loaded on first use (and before any fork: dlopen takes locks)."""
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def trim_heap() -> None:
    """Return free heap pages to the system (glibc keeps them otherwise)."""
    try:
        libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def release_startup_memory() -> None:
    """Before a long idle life: collect what imports and start-up left, keep what remains out of
    future collections, share one malloc arena between threads (they mostly wait, and one trim
    then returns it all), and give free pages back."""
    import gc

    gc.collect()
    gc.freeze()
    try:
        libc().mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc
        pass
    trim_heap()
