"""How long the `unlearn` CLI takes to refuse bad input (validation runs before Ray starts).

Each bad command runs as a fresh ``.venv/bin/unlearn`` process (interpreter start and imports
included, as a user sees it), ``BENCH_QUICK=1``: 1 repeat, else 3. Prints the wall time, exit code
and the error line per command; the target is under ~3 s each on the 2-core machine (under ~10 s for
a tracking server that never replies: the probe waits 5 s for it).
A workdir with a records folder (no vanilla model) stands in for a user's existing one, beside a
user's folder, a copied workdir, hostile files (a YAML billion laughs, JSON nested 200,000 deep, a
prediction file matching no record) and two ports (one closed, one that never replies); the whole
bench folder is compared before and after every command: nothing may be written or deleted, but a
command's own log file in ``logs/`` (after the checks that pass, a refused ``pull`` starts its log).

    .venv/bin/python bench/cli_errors.py
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, QUICK, Stats, header, load, load_summary, save, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
UNLEARN = ROOT / ".venv" / "bin" / "unlearn"


def _tree(folder: Path, skip: str = "logs") -> list[tuple[str, int, int]]:
    """Every path under ``folder`` but the log folders (``*/logs/...``, where commands log)."""
    if not folder.exists():
        return []
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns if p.is_file() else 0)
        for p in folder.rglob("*")
        if skip not in p.relative_to(folder).parts
    )


def _silent_port() -> int:
    """A listening port that never replies (a hung tracking server), open while the bench runs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    threading.Thread(target=lambda: (time.sleep(3600), server.close()), daemon=True).start()
    return server.getsockname()[1]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copied_workdir(root: Path) -> Path:
    """A workdir whose MLflow store was made in ``root/orig`` and then copied to ``root/copy``."""
    copy = root / "copy"
    if not (copy / "mlflow.db").is_file():
        subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "python"),
                "-c",
                "import sys; from pipelines.tracking import ensure_experiment; "
                "ensure_experiment(f'sqlite:///{sys.argv[1]}/mlflow.db', 'lvlm-unlearn', sys.argv[1])",
                str(root / "orig"),
            ],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        shutil.copytree(root / "orig", copy)
    return copy


def _bomb_yaml() -> str:
    head = [
        "method:",
        "  name: ga",
        "  params:",
        '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    ]
    links = [
        f"    {n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    return "\n".join(head + links) + "\n"


def _hostile_cases(
    root: Path, wd: Path, user: Path, deep: Path, copy: Path, silent: int, closed: int
) -> dict[str, list[str]]:
    pull = ["pull", "models:/m@champion", "--out", str(root / "p")]
    convert = ["data", "convert", "--format", "jsonl", "--source", str(deep), "--out"]
    score = ["score", "--records", str(wd / "records"), "--predictions", str(root / "preds.jsonl")]
    return {
        "pull --out a user's folder": [*pull[:3], str(user)],
        "data shard --out a user's folder": [
            *"data shard --model tiny-llava --records".split(),
            str(wd / "records"),
            "--out",
            str(user),
        ],
        "data convert --out . (the working dir)": [*convert, "."],
        "run --config (407-byte YAML bomb)": [
            "run",
            "--config",
            str(root / "bomb.yaml"),
            "--workdir",
            str(wd),
        ],
        "pull, tracking URI a closed port": [*pull, "--tracking-uri", f"http://127.0.0.1:{closed}"],
        "pull, tracking server never replies": [*pull, "--tracking-uri", f"http://127.0.0.1:{silent}"],
        "pull in a copied workdir": [*pull, "--workdir", str(copy)],
        "data convert (JSON 200k deep, nothing usable)": [*convert, str(root / "rec")],
        "score --out a folder": [*score, "--out", str(user)],
    }


def main() -> int:
    m = header("CLI: time to refuse bad input")
    root = BENCH_DIR / "cli_errors"
    wd = root / "wd"
    (wd / "records").mkdir(parents=True, exist_ok=True)
    (wd / "records" / "records_meta.json").write_text("{}")
    space = root / "bad_space.yaml"
    space.write_text("method: ga\nspace:\n  train.lr: {uniform: [-1.0, 1.0e-3]}\n")
    new = root / "NEW"
    user = root / "user_folder"
    user.mkdir(exist_ok=True)
    (user / "keep.txt").write_text("a user's file\n")
    (root / "bomb.yaml").write_text(_bomb_yaml())
    deep = root / "deep"
    deep.mkdir(exist_ok=True)
    (deep / "records.jsonl").write_text('{"sample_id": "a", "x": ' + "[" * 200_000 + "]" * 200_000 + "}\n")
    (root / "preds.jsonl").write_text('{"sample_id": "nope", "generation": "a"}\n')
    copy = _copied_workdir(root)
    silent, closed = _silent_port(), _closed_port()
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
        # the hostile-input probes (tests/test_hostile_input.py checks the same refusals)
        **_hostile_cases(root, wd, user, deep, copy, silent, closed),
    }
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["UNLEARN_LOG_DIR"] = str(root / "logs")
    repeats = 1 if QUICK else 3
    rows, results = [], {}
    for label, argv in cases.items():
        load(label)
        times, rc, first = [], None, ""
        for _ in range(repeats):
            before = _tree(root)
            t0 = time.perf_counter()
            out = subprocess.run([str(UNLEARN), *argv], cwd=ROOT, env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - t0)
            rc, first = out.returncode, (out.stderr.strip().splitlines() or [""])[-1]
            if _tree(root) != before or new.exists():
                raise SystemExit(f"{label}: the bench folder changed")
            if "Traceback" in out.stdout + out.stderr:
                raise SystemExit(f"{label}: a traceback reached the terminal")
        stats = Stats(times)
        results[label] = {"seconds": stats.as_dict(), "rc": rc, "error": first}
        rows.append([label, stats.short(), rc, first[:90]])
    table(["bad input", "seconds (median [min, max])", "exit", "error (last line, cut)"], rows)
    print(load_summary())
    save("cli_errors", {"machine": m, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
