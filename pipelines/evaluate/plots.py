"""Forget-vs-utility figures and result tables for sweeps (one point per trial) and method comparisons
(one point per single run, ``{method: metrics}``).

The scatter: x = ``forget.leak_rate`` (filled marker; ``forget_unseen.leak_rate`` as a hollow marker of
the same run, joined by a dotted line), y = ``retain.vqa_acc``, marker shape = method, marker size =
``quality.informativeness``. Pareto-optimal runs (``pareto_front``) get a red ring and a bold label.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

LEAK = "forget.leak_rate"
LEAK_UNSEEN = "forget_unseen.leak_rate"
RETAIN = "retain.vqa_acc"
INFORMATIVENESS = "quality.informativeness"
# (metric, direction) pairs a Pareto-optimal run may not be beaten on all at once.
PARETO_CRITERIA: tuple[tuple[str, str], ...] = (
    (LEAK, "min"),
    (LEAK_UNSEEN, "min"),
    (RETAIN, "max"),
    (INFORMATIVENESS, "max"),
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")

Metrics = Mapping[str, float]


def _value(metrics: Metrics, name: str) -> float | None:
    v = metrics.get(name)
    if v is None or not isinstance(v, int | float) or math.isnan(float(v)):
        return None
    return float(v)


def dominates(a: Metrics, b: Metrics, criteria: Sequence[tuple[str, str]] = PARETO_CRITERIA) -> bool:
    """``a`` is at least as good as ``b`` on every criterion both have and strictly better on one."""
    better = False
    for name, mode in criteria:
        va, vb = _value(a, name), _value(b, name)
        if va is None or vb is None:
            continue
        if (va < vb) if mode == "max" else (va > vb):
            return False
        if va != vb:
            better = True
    return better


def pareto_front(
    runs: Mapping[str, Metrics], criteria: Sequence[tuple[str, str]] = PARETO_CRITERIA
) -> list[str]:
    """Names of the runs no other run dominates (criteria a run lacks are ignored for that pair)."""
    return [
        n for n, m in runs.items() if not any(dominates(o, m, criteria) for k, o in runs.items() if k != n)
    ]


def plot_forget_utility(
    runs: Mapping[str, Metrics],
    out: str | Path,
    *,
    methods: Mapping[str, str] | None = None,
    highlight: Sequence[str] | None = None,
    reference: Mapping[str, Metrics] | None = None,
    title: str = "forget vs utility",
) -> Path:
    """Write the forget-vs-utility scatter of ``runs`` (name -> metrics) as a PNG; returns its path.

    ``methods`` maps a run to its method (marker shape; default: the run name itself, so
    ``{method: metrics}`` of single runs works as is). ``highlight`` defaults to the Pareto front of
    ``runs``. ``reference`` runs (e.g. ``{"vanilla": before}``) are drawn as black stars and are not
    part of the front. Runs without ``forget.leak_rate`` or ``retain.vqa_acc`` are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    methods = dict(methods or {})
    plottable = {
        n: m for n, m in runs.items() if _value(m, LEAK) is not None and _value(m, RETAIN) is not None
    }
    front = set(pareto_front(plottable) if highlight is None else highlight)
    method_of = {n: methods.get(n, n) for n in plottable}
    marker_of = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(dict.fromkeys(method_of.values()))}

    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=120)
    for name, m in plottable.items():
        x, y = _value(m, LEAK), _value(m, RETAIN)
        size = _size(_value(m, INFORMATIVENESS))
        marker = marker_of[method_of[name]]
        unseen = _value(m, LEAK_UNSEEN)
        if unseen is not None:
            ax.plot([x, unseen], [y, y], ls=":", lw=0.8, color="grey", zorder=1)
            ax.scatter([unseen], [y], s=size, marker=marker, facecolors="none", edgecolors="C0", zorder=2)
        ax.scatter([x], [y], s=size, marker=marker, color="C0", alpha=0.8, zorder=3)
        if name in front:
            ax.scatter(
                [x], [y], s=size * 1.8 + 40, marker="o", facecolors="none", edgecolors="red", lw=1.5, zorder=4
            )
        ax.annotate(
            name,
            (x, y),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=7,
            fontweight="bold" if name in front else "normal",
        )
    for name, m in (reference or {}).items():
        x, y = _value(m, LEAK), _value(m, RETAIN)
        if x is None or y is None:
            continue
        ax.scatter([x], [y], s=180, marker="*", color="black", zorder=5)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, -10), fontsize=8)

    handles = [Line2D([], [], ls="", marker=mk, color="C0", label=meth) for meth, mk in marker_of.items()]
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="C0", label="hollow: forget_unseen"))
    handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="red", label="Pareto front"))
    if reference:
        handles.append(Line2D([], [], ls="", marker="*", color="black", label="reference"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xlabel(f"{LEAK} (lower is better)")
    ax.set_ylabel(f"{RETAIN} (higher is better)")
    ax.set_title(f"{title}\nmarker size = {INFORMATIVENESS}", fontsize=9)
    ax.grid(alpha=0.3)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _size(informativeness: float | None) -> float:
    return 30.0 + 320.0 * max(0.0, min(1.0, informativeness if informativeness is not None else 0.0))


def _cell(value: Any, precision: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{precision}g}"
    return str(value)


def write_results_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    csv_path: str | Path,
    md_path: str | Path | None = None,
) -> list[Path]:
    """One row per run: a CSV (every column) and optionally the same as a Markdown table."""
    paths = [Path(csv_path)]
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    with paths[0].open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") if row.get(c) is not None else "" for c in columns])
    if md_path is not None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
        Path(md_path).write_text("\n".join(lines) + "\n")
        paths.append(Path(md_path))
    return paths
