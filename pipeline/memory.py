"""Handing freed heap memory back to the kernel, after each run (tracking.start) in every process."""
from __future__ import annotations

_MALLOC_TRIM = None  # glibc's malloc_trim, once looked up (False where there is none)


def release_freed_memory() -> None:
    """Hand the heap pages freed by the run that just ended back to the kernel (glibc's malloc_trim). glibc
    keeps freed blocks of a few MB inside the process once it has raised its mmap threshold, so each
    process (the command, every worker) otherwise grows with the data of its first runs, although it holds
    none of it any more (bench/bench_scale.py measures it). Does nothing where malloc_trim does not exist."""
    import ctypes
    import ctypes.util

    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)
