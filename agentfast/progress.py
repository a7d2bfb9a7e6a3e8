"""Progress bars that suit where the output goes.

On a terminal (or in a notebook) a live tqdm bar; in a log file or a pipe, a few plain
lines instead of a carriage-return line per update: one whenever another tenth of the work
is done (at most one per ``MIN_SECONDS``), one at least every ``MAX_SECONDS`` while work
goes on, and a last one when the bar closes.

    with progress_bar(total=len(texts), desc="embedding", unit="text") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

MIN_SECONDS = 5.0    # plain lines: never closer together than this, except the last
MAX_SECONDS = 60.0   # plain lines: never further apart than this while updates come


def progress_bar(total: int | None, *, desc: str, unit: str = "it", initial: int = 0,
                 file: IO[str] | None = None) -> Any:
    """A bar with tqdm's ``update(n)``, ``set_postfix(**values)``, ``close()`` and context
    manager: tqdm's own on a terminal or in a notebook, :class:`PlainProgress` elsewhere."""
    stream = sys.stderr if file is None else file
    if _is_terminal(stream):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=stream,
                    dynamic_ncols=True)
    if _in_notebook():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial)
    return PlainProgress(total, desc=desc, unit=unit, initial=initial, file=stream)


def write(message: str, file: IO[str] | None = None) -> None:
    """Print a line without breaking a live bar (tqdm.write moves the bar below the line)."""
    from tqdm import tqdm

    tqdm.write(message, file=file if file is not None else sys.stdout)


class PlainProgress:
    """Sparse progress lines for logs (``desc: 40% 240/600 [00:38<00:57, 6.2step/s, loss=0.41]``)."""

    def __init__(self, total: int | None, *, desc: str, unit: str = "it", initial: int = 0,
                 file: IO[str] | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start = initial
        self.file = file
        self.postfix = ""
        self._started = self._last_line = time.monotonic()
        self._next_tenth = self._tenth_after(initial)
        self._printed_n = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        since_last = now - self._last_line
        if (self.n >= self._next_tenth and since_last >= MIN_SECONDS) or since_last >= MAX_SECONDS:
            self._print_line(now)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        """Values shown after the rate from the next line on (set them before ``update``)."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._printed_n:
            self._print_line(time.monotonic())

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def line(self, now: float | None = None) -> str:
        """The current state as one line (tqdm's meter without the bar)."""
        from tqdm import tqdm

        elapsed = (time.monotonic() if now is None else now) - self._started
        # The rate counts this run's work only, as tqdm's does after a resume.
        return tqdm.format_meter(self.n, self.total, elapsed, ncols=0, prefix=self.desc,
                                 unit=self.unit, postfix=self.postfix or None,
                                 rate=(self.n - self._start) / elapsed if elapsed > 0 else None,
                                 initial=self._start)

    def _print_line(self, now: float) -> None:
        print(self.line(now), file=self.file if self.file is not None else sys.stderr, flush=True)
        self._last_line, self._printed_n = now, self.n
        self._next_tenth = self._tenth_after(self.n)

    def _tenth_after(self, n: int) -> float:
        if not self.total:
            return float("inf")
        step = self.total / 10
        return (int(n / step) + 1) * step


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _in_notebook() -> bool:
    """A Jupyter kernel: output is not a terminal, yet tqdm's widget bar updates in place."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ipython = shell.get_ipython()
    except AttributeError:
        return False
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})
