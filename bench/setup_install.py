"""Seconds of `make setup`'s install step: pip against uv, side by side, and whether they install the same.

Each repeat creates two fresh virtual environments under ``$BENCH_DIR`` and installs the project
(``-e ".[dev]"`` with ``constraints-cpu.txt``) into one with pip and into the other with uv, configured
as ``make setup`` configures it (``.ci/uv_flags.py``); pip's and uv's caches stay as they are (warm
after the first install on a machine). Afterwards the two environments' ``pip freeze`` are compared
(uv itself and the editable project's line left out).

Run: ``.venv/bin/python bench/setup_install.py`` (``BENCH_QUICK=1``: one repeat).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import common

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 1 if common.QUICK else 2


def fresh_venv(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def timed_run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t0


def install_pip(py: Path) -> float:
    return timed_run([str(py), "-m", "pip", "install", "-q", "-c", "constraints-cpu.txt", "-e", ".[dev]"])


def install_uv(py: Path) -> float:
    """`make setup`'s two steps: pip installs uv, uv installs the project."""
    flags = subprocess.run(
        [str(py), str(ROOT / ".ci" / "uv_flags.py")], check=True, capture_output=True, text=True
    ).stdout.split()
    t = timed_run([str(py), "-m", "pip", "install", "-q", "uv"])
    uv = str(py.parent / "uv")
    return t + timed_run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "--compile-bytecode",
            "--python",
            str(py),
            *flags,
            "-c",
            "constraints-cpu.txt",
            "-e",
            ".[dev]",
        ]
    )


def frozen(py: Path) -> set[str]:
    out = subprocess.run([str(py), "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
    lines = {line.strip().lower().replace("_", "-") for line in out.splitlines()}
    return {x for x in lines if x and not x.startswith(("-e ", "#", "uv==", "setuptools=="))}


def main() -> None:
    common.header("bench/setup_install.py: make setup's install, pip vs uv")
    rows, same = [], []
    for r in range(REPEATS):
        common.load(f"repeat {r + 1}")
        pip_py = fresh_venv(common.BENCH_DIR / "venv-pip")
        uv_py = fresh_venv(common.BENCH_DIR / "venv-uv")
        pip_s, uv_s = install_pip(pip_py), install_uv(uv_py)
        a, b = frozen(pip_py), frozen(uv_py)
        same.append(a == b)
        rows.append(
            [
                r + 1,
                f"{pip_s:.1f}",
                f"{uv_s:.1f}",
                f"{uv_s / pip_s:.2f}",
                len(a),
                "yes" if a == b else f"no: {sorted(a ^ b)[:6]}",
            ]
        )
    common.table(["repeat", "pip s", "uv s (incl. installing uv)", "uv / pip", "packages", "same set"], rows)
    print(common.load_summary())
    common.save("setup_install", {"rows": rows, "same": same})


if __name__ == "__main__":
    main()
