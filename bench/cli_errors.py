"""How long the `unlearn` CLI takes to refuse bad input (validation runs before Ray starts).

Each bad command runs as a fresh ``.venv/bin/unlearn`` process (interpreter start and imports
included, as a user sees it), ``BENCH_QUICK=1``: 1 repeat, else 3. Prints the wall time, exit code
and first line of the error per command; the target is under ~3 s each on the 2-core machine.
A workdir with a records folder (no vanilla model) stands in for a user's existing one; its state is
compared before and after every command (nothing may be written).

    .venv/bin/python bench/cli_errors.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, QUICK, Stats, header, load, load_summary, save, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UNLEARN = ROOT / ".venv" / "bin" / "unlearn"


def _tree(folder: Path) -> list[tuple[str, int, int]]:
    if not folder.exists():
        return []
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
    )


def main() -> int:
    m = header("CLI: time to refuse bad input")
    root = BENCH_DIR / "cli_errors"
    wd = root / "wd"
    (wd / "records").mkdir(parents=True, exist_ok=True)
    (wd / "records" / "records_meta.json").write_text("{}")
    space = root / "bad_space.yaml"
    space.write_text("method: ga\nspace:\n  train.lr: {uniform: [-1.0, 1.0e-3]}\n")
    new = root / "NEW"
    cases = {
        "run --method no_such_method (new workdir)": [
            "run",
            "--method",
            "no_such_method",
            "--workdir",
            str(new),
        ],
        "run --method no_such_method": ["run", "--method", "no_such_method", "--workdir", str(wd)],
        "run --set train.lr=-1": ["run", "--method", "ga", "--set", "train.lr=-1", "--workdir", str(wd)],
        "run --set method.params.beta=-1": [
            "run",
            "--method",
            "npo",
            "--set",
            "method.params.beta=-1",
            "--workdir",
            str(wd),
        ],
        "run (no vanilla model yet)": ["run", "--method", "ga", "--workdir", str(wd)],
        "sweep --space (bad range)": ["sweep", "--space", str(space), "--workdir", str(wd)],
        "demo --methods ga,nope": ["demo", "--methods", "ga,nope", "--workdir", str(wd)],
        "data shard --records (not records)": [
            "data",
            "shard",
            "--records",
            str(root),
            "--model",
            "tiny-llava",
            "--out",
            str(wd / "shards"),
        ],
        "run --steps many (argparse)": ["run", "--steps", "many"],
    }
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    repeats = 1 if QUICK else 3
    rows, results = [], {}
    for label, argv in cases.items():
        load(label)
        times, rc, first = [], None, ""
        for _ in range(repeats):
            before = _tree(wd)
            t0 = time.perf_counter()
            out = subprocess.run([str(UNLEARN), *argv], cwd=ROOT, env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            rc, first = out.returncode, (out.stderr.strip().splitlines() or [""])[-1]
            if _tree(wd) != before or new.exists():
                raise SystemExit(f"{label}: the workdir changed")
        stats = Stats(times)
        results[label] = {"seconds": stats.as_dict(), "rc": rc, "error": first}
        rows.append([label, stats.short(), rc, first[:90]])
    table(["bad input", "seconds (median [min, max])", "exit", "error (last line, cut)"], rows)
    print(load_summary())
    save("cli_errors", {"machine": m, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
