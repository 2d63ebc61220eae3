"""Run every bench script (``make bench``), one after the other, each in its own process and Ray.

    .venv/bin/python bench/run_all.py                 # all of them
    .venv/bin/python bench/run_all.py train_step data # some of them
    .venv/bin/python bench/run_all.py --quick         # BENCH_QUICK=1: fewer steps / repeats
    .venv/bin/python bench/run_all.py --skip sweep    # leave one out (the sweep takes longest)

Each script prints its own tables and writes ``$BENCH_DIR/results/<name>.json`` (default
``/tmp/bench``); this runner ends with all the tables together.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = (
    "train_step", "method_cost", "data", "mask_cost", "scaling", "sweep", "trial_cost", "cli_errors", "setup_install",
)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"scripts to run (default: all of {', '.join(SCRIPTS)})")
    ap.add_argument("--quick", action="store_true", help="BENCH_QUICK=1")
    ap.add_argument("--skip", action="append", default=[], choices=SCRIPTS, help="leave a script out")
    args = ap.parse_args()
    unknown = [n for n in args.names if n not in SCRIPTS]
    if unknown:
        ap.error(f"unknown bench script(s) {unknown}; valid: {', '.join(SCRIPTS)}")
    names = [n for n in (args.names or SCRIPTS) if n not in args.skip]
    env = dict(os.environ)
    if args.quick:
        env["BENCH_QUICK"] = "1"
    results_dir = Path(env.get("BENCH_DIR", "/tmp/bench")) / "results"
    failed = []
    for name in names:
        print(f"\n################ bench/{name}.py ################", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / f"{name}.py")], cwd=HERE.parent, env=env)
        print(f"bench/{name}.py: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(name)
    print("\n################ summary ################")
    for name in names:
        path = results_dir / f"{name}.json"
        if name in failed or not path.exists():
            print(f"\n{name}: no results ({'failed' if name in failed else 'missing'})")
            continue
        data = json.loads(path.read_text())
        print(f"\n{name}:")
        for key, value in data.items():
            if key.endswith("table") and isinstance(value, str):
                print(value)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
