"""What a person watching sees while training runs: a live progress line per training on a terminal.

On a terminal (stderr is a tty) each training shows a `tqdm` line: its label (stage/strategy), epoch / max,
the best validation metric so far, elapsed time and an ETA (an upper bound: early stopping may end it
sooner). Elsewhere (CI, `mlflow run` logs, a pipe) there is no bar, only the stages' lines: one per stage with
its choice (`stages.common.say`) and, under `--verbose`, one per finished run (`stages.common.detail`). `--quiet`
silences all of them. The bar disappears when its training ends.
"""
from __future__ import annotations

import os
import sys
import textwrap

_quiet = False
_ENV = "REG2CLS_QUIET"  # --quiet, inherited by the worker processes (--jobs) this process starts after it
_VERBOSE_ENV = "REG2CLS_VERBOSE"  # --verbose, inherited the same way
MININTERVAL = 0.5  # seconds between redraws of a bar
WIDTH = 110  # a console line is wrapped here: within a usual terminal's 120 columns, as the verdict is


def set_quiet(quiet: bool) -> None:
    """--quiet: no progress bars and no per-run lines for the rest of this process."""
    global _quiet
    _quiet = bool(quiet)
    if _quiet:
        os.environ[_ENV] = "1"
    else:
        os.environ.pop(_ENV, None)


def quiet() -> bool:
    return _quiet or os.environ.get(_ENV) == "1"


def set_verbose(verbose: bool) -> None:
    """--verbose: a line per finished run too, for the rest of this process and the workers it starts."""
    if verbose:
        os.environ[_VERBOSE_ENV] = "1"
    else:
        os.environ.pop(_VERBOSE_ENV, None)


def verbose() -> bool:
    return os.environ.get(_VERBOSE_ENV) == "1"


def _worker_line() -> int:
    """The line a bar takes: 0 in the main process, the worker's number in a worker process (--jobs), so that
    side-by-side trainings each keep their own line."""
    import multiprocessing

    identity = multiprocessing.current_process()._identity
    return identity[0] if identity else 0


def live() -> bool:
    """Whether progress bars are shown: on a terminal, unless --quiet."""
    if quiet():
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _size() -> tuple[int, int]:
    """The terminal's columns (a longer line is cut) and lines; 120 x 24 where it reports 0 (a bare pty),
    where tqdm would print nothing at all."""
    import os

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return size.columns or 120, size.lines or 24
    except (OSError, ValueError, AttributeError):
        return 120, 24


class Bar:
    """One training's progress line: `update(epoch, value)` after each epoch, `close()` at its end.

    `metric` names the validation value shown (e.g. val/f1_macro), `higher` whether larger is better; the
    line shows the best value so far. Without a terminal (or under --quiet) every call does nothing."""

    def __init__(self, label: str, epochs: int, metric: str, higher: bool = True):
        self.metric, self.higher, self.best = metric, higher, None
        self._bar = None
        if live():
            from tqdm import tqdm

            columns, lines = _size()
            self._bar = tqdm(total=epochs, desc=label, unit="epoch", leave=False, ncols=columns, nrows=lines,
                             position=_worker_line(),
                             mininterval=MININTERVAL, file=sys.stderr,
                             bar_format="{desc}: epoch {n_fmt}/{total_fmt}{postfix} [{elapsed}<{remaining}]")

    def update(self, epoch: int, value: float) -> None:
        if self._bar is None:
            return
        if value == value and (self.best is None or (value > self.best if self.higher else value < self.best)):
            self.best = value
        self._bar.set_postfix_str(f"best {self.metric} {self.best:.4g}" if self.best is not None else "", refresh=False)
        self._bar.update(epoch - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write(msg: str, err: bool = False) -> None:
    """Print one line (a stage's result; with `err`, a warning on stderr, shown even under --quiet) above any
    live bar; other lines are silent under --quiet. A result is wrapped at `WIDTH` (a word longer than that, a
    path or a link, stays whole); a warning stays one line, which a log search finds whole."""
    if quiet() and not err:
        return
    if not err:
        msg = "\n".join(textwrap.fill(line, width=WIDTH, subsequent_indent="    ", break_long_words=False,
                                       break_on_hyphens=False) for line in msg.splitlines())
    stream = sys.stderr if err else sys.stdout
    if live():
        from tqdm import tqdm

        tqdm.write(msg, file=stream)
    else:
        print(msg, file=stream)
    stream.flush()
