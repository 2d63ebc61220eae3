"""Plain-text metric tables for the terminal: one row per metric, one column per run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from unlearn_core.eval.metrics import METRIC_DEFINITIONS, higher_is_better

# The order of docs/metrics.md first; other metrics follow alphabetically.
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

    ``metrics`` picks and orders the rows (default: every metric any run has, docs/metrics.md order first).
    With ``show_direction`` a column says whether lower or higher is better.
    """
    header, rows = _cells(runs, metrics, precision, show_direction)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    n_left = 2 if show_direction else 1  # text columns are left-aligned, numbers right-aligned

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < n_left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_markdown_table(
    runs: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
    *,
    precision: int = 3,
    show_direction: bool = True,
) -> str:
    """``format_table``'s table as Markdown (metric names as code, numbers right-aligned)."""
    header, rows = _cells(runs, metrics, precision, show_direction)
    n_left = 2 if show_direction else 1
    align = ["---"] * n_left + ["---:"] * (len(header) - n_left)
    lines = [header, align, *([f"`{r[0]}`", *r[1:]] for r in rows)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def _cells(
    runs: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None,
    precision: int,
    show_direction: bool,
) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (metric, direction, one value per run) of a metric table."""
    names = list(metrics) if metrics is not None else _order({m for r in runs.values() for m in r})
    header = ["metric", *(["better"] if show_direction else []), *runs]
    rows = [
        [name, *(["high" if higher_is_better(name) else "low"] if show_direction else [])]
        + [_fmt(run.get(name), precision) for run in runs.values()]
        for name in names
    ]
    return header, rows
