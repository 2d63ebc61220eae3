"""Plain-text metric tables for the terminal: one row per metric, one column per run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from unlearn_core.eval.metrics import METRIC_DEFINITIONS, higher_is_better

# The documented order first; other metrics follow alphabetically.
METRIC_ORDER: tuple[str, ...] = tuple(METRIC_DEFINITIONS)


def _order(names: set[str]) -> list[str]:
    known = [m for m in METRIC_ORDER if m in names]
    return known + sorted(names - set(known))


def _fmt(value: float | None, precision: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return f"{value:.{precision}f}"


def format_table(
    runs: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    *,
    precision: int = 3,
    show_direction: bool = True,
) -> str:
    """An aligned table of ``runs`` (run name -> metrics) side by side; "-" where a run lacks a metric.

    ``metrics`` picks and orders the rows (default: every metric any run has, documented order first).
    With ``show_direction`` a column says whether lower or higher is better.
    """
    names = list(metrics) if metrics is not None else _order({m for r in runs.values() for m in r})
    header = ["metric", *(["better"] if show_direction else []), *runs]
    rows = [
        [name, *(["high" if higher_is_better(name) else "low"] if show_direction else [])]
        + [_fmt(run.get(name), precision) for run in runs.values()]
        for name in names
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    n_left = 2 if show_direction else 1  # text columns are left-aligned, numbers right-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < n_left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])
