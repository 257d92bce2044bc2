"""A stop requested by a signal, honoured where unwinding is safe.

A signal handler only records the request (`request`); the training loop (train.fit's `stop` argument) and
tune's trial loop call `check` between steps, which raises it there, so the open runs end KILLED. A raise
straight from the handler could land inside a garbage-collection callback, where Python prints the exception
and swallows it. The command forgets a handled request (`clear`).
"""
from __future__ import annotations

_REQUESTED: type[BaseException] | None = None  # what `check` raises


def request(exc: type[BaseException]) -> None:
    """Ask this process to stop: `check` raises `exc` from now on."""
    global _REQUESTED
    _REQUESTED = exc


def requested() -> bool:
    """Whether a stop has been requested and not yet cleared."""
    return _REQUESTED is not None


def check() -> None:
    """Raise the stop requested, if any."""
    if _REQUESTED is not None:
        raise _REQUESTED()


def clear() -> None:
    """Forget a stop request once it has been handled."""
    global _REQUESTED
    _REQUESTED = None
