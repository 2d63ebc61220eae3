"""What the person at the terminal sees: stage lines, one progress display per long stage, results.

``start()`` is called once per CLI command, after validation and before Ray starts. Unless
``verbose``, it points the process's stdout and stderr (file descriptors 1 and 2, so Ray's C++
logs, the workers' lines Ray forwards to the driver, Python warnings and every library's logging
too) at a log file in the workdir, and keeps the real terminal for :class:`Console` alone.

On a terminal (TTY) progress is a live ``rich`` bar; otherwise (CI, ``ray job submit`` logs, a pipe)
output is plain text, one line per event, without ANSI codes or carriage returns.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

LOG_DIR = "logs"
# Plain (non-TTY) progress prints a line when a bar crosses one of these fractions (and at the end).
PLAIN_MARKS = (0.25, 0.5, 0.75)


class Progress:
    """One progress display. ``update(done, note)`` sets the position; ``close()`` ends it."""

    def __init__(
        self, console: Console, label: str, total: int, unit: str = "", marks: tuple[float, ...] = PLAIN_MARKS
    ) -> None:
        self.console, self.label, self.total, self.unit = console, label, max(int(total), 0), unit
        self.done, self.note = 0, ""
        self._t0 = time.perf_counter()
        self._marks = sorted(marks)
        self._closed = False
        self._task = None
        if console.live is not None:
            self._task = console.live.add_task(label, total=self.total or None, note="")

    def update(self, done: int, note: str = "") -> None:
        self.done, self.note = min(int(done), self.total) if self.total else int(done), note or self.note
        if self._task is not None:
            self.console.live.update(self._task, completed=self.done, note=self.note)
            return
        if self.total and self._marks and self.done < self.total and self.done >= self._marks[0] * self.total:
            while self._marks and self.done >= self._marks[0] * self.total:
                self._marks.pop(0)
            self.console.say(self._line())

    def advance(self, n: int = 1, note: str = "") -> None:
        self.update(self.done + n, note)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self.console.live.update(self._task, completed=self.done, note=self.note)
            self.console.live.stop_task(self._task)
            return
        self.console.say(self._line() + f" - done in {time.perf_counter() - self._t0:.0f} s")

    def _line(self) -> str:
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        line = f"[{self.label}] {self.done}/{self.total or '?'}{unit}{share}"
        return f"{line} | {self.note}" if self.note else line


class Console:
    """Writes to the real terminal (or any stream); ``live`` decides rich bars vs plain lines."""

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        log_path: Path | None = None,
        err_stream: TextIO | None = None,
    ) -> None:
        self.stream = stream
        self.err_stream = err_stream or stream
        self.log_path = log_path
        self._lock = threading.Lock()
        self.live: Any = None
        self._open = 0
        self._rich: Any = None
        if stream.isatty() if live is None else live:
            from rich.console import Console as RichConsole
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichConsole(file=stream, highlight=False, markup=False)
            self.live = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"),
                console=self._rich,
                transient=False,
            )

    def say(self, text: str = "") -> None:
        """One line (or a block, e.g. a table) for the person reading."""
        with self._lock:
            if self._rich is not None:
                self._rich.print(text, markup=False, highlight=False, soft_wrap=True)
            else:
                self.stream.write(f"{text}\n")
                self.stream.flush()

    def error(self, text: str) -> None:
        """An error line on the terminal's stderr (the process's own stderr may be the log file)."""
        with self._lock:
            self.err_stream.write(f"{text}\n")
            self.err_stream.flush()

    def stage(self, text: str) -> None:
        self.say(f"== {text}")

    @contextmanager
    def progress(
        self, label: str, total: int, unit: str = "", marks: tuple[float, ...] = PLAIN_MARKS
    ) -> Iterator[Progress]:
        """A display for one long stage. Plain output: a line at each of ``marks`` (shares of
        ``total``) and one at the end."""
        with self._lock:
            if self.live is not None and self._open == 0:
                self.live.start()
            self._open += 1
        bar = Progress(self, label, total, unit, marks)
        try:
            yield bar
        finally:
            bar.close()
            with self._lock:
                self._open -= 1
                if self.live is not None and self._open == 0:
                    self.live.stop()
                    for task_id in list(self.live.task_ids):
                        self.live.remove_task(task_id)


_ACTIVE: Console | None = None
# (stdout fd, its saved copy, stderr fd, its saved copy, log file) for each redirecting ``start``.
_REDIRECTED: list[tuple[int, int, int, int, Any]] = []


def active() -> Console | None:
    """The console of this CLI process; None in library use, tests, Ray workers and Tune trials."""
    return _ACTIVE


def say(text: str = "") -> None:
    """``Console.say`` when a console is active, else ``print`` (library use)."""
    (_ACTIVE.say if _ACTIVE is not None else print)(text)


@contextmanager
def progress(
    label: str, total: int, unit: str = "", marks: tuple[float, ...] = PLAIN_MARKS
) -> Iterator[Progress | None]:
    """The active console's progress display, or None when there is no console (nothing shown)."""
    if _ACTIVE is None:
        yield None
        return
    with _ACTIVE.progress(label, total, unit, marks) as bar:
        yield bar


# Libraries' own progress bars (MLflow's artifact transfers, tqdm bars of transformers, the HF hub and
# Ray's tqdm). On a terminal they are merely noisy; in a plain log (CI, `ray job submit`) each bar is
# one long line of carriage returns.
LIBRARY_BAR_SWITCHES = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def quiet_library_bars(*, always: bool = False) -> None:
    """Turn off the libraries' own progress bars, in this process and the Ray workers it starts (they
    inherit its environment), unless both stdout and stderr are a terminal (``always``: even then) or
    the user set the variable; the console's own progress lines stay."""
    if always or not (sys.stdout.isatty() and sys.stderr.isatty()):
        for key, value in LIBRARY_BAR_SWITCHES.items():
            os.environ.setdefault(key, value)


def log_file_path(workdir: str | Path, command: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(workdir) / LOG_DIR / f"{command.replace(' ', '-')}-{stamp}-{os.getpid()}.log"


def start(workdir: str | Path | None, command: str, *, verbose: bool = False) -> Console:
    """Set up this process's console; unless ``verbose``, everything else goes to a log file in
    ``workdir/logs`` (whose path is printed once). Returns the active console."""
    global _ACTIVE
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1, encoding="utf-8", errors="replace")
    terminal_err = os.fdopen(
        os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8", errors="replace"
    )
    log_path = None
    if not verbose and workdir is not None:
        log_path = log_file_path(workdir, command)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed by stop()
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
        _REDIRECTED.append((out_fd, os.dup(out_fd), err_fd, os.dup(err_fd), log))
        os.dup2(log.fileno(), out_fd)
        os.dup2(log.fileno(), err_fd)
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI codes in the log file's worker prefixes
        quiet_library_bars(always=True)  # their output goes to the log file
    _ACTIVE = Console(terminal, log_path=log_path, err_stream=terminal_err)
    if log_path is not None:
        _ACTIVE.say(f"log: {log_path} (Ray and library output; --verbose shows it here)")
    return _ACTIVE


def stop() -> None:
    """Forget the active console and point stdout/stderr back where they were before ``start``, so a
    command run in-process (tests, notebooks) leaves its caller's file descriptors as it found them."""
    global _ACTIVE
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    while _REDIRECTED:
        out_fd, saved_out, err_fd, saved_err, log = _REDIRECTED.pop()
        os.dup2(saved_out, out_fd)
        os.dup2(saved_err, err_fd)
        os.close(saved_out)
        os.close(saved_err)
        log.close()
    _ACTIVE = None
