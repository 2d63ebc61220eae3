"""Where a job's wall time went: the one recorder behind the ``time/*`` metrics of training jobs and
sweep trials (``bench/`` reads them; nothing in the product path depends on them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseClock:
    """Wall seconds of named phases (``with clock.phase("fit"): ...``) and since the clock started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - began

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def metrics(self) -> dict[str, float]:
        """The phases as metrics: ``time/<phase>_s``."""
        return {f"time/{name}_s": seconds for name, seconds in self.seconds.items()}


def process_age_s() -> float:
    """Seconds since this process started. At the start of a sweep trial: its actor's start-up and
    imports when the trial is the actor's first, plus the earlier trials of a reused actor."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())
