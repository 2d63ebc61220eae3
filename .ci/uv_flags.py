"""Print `uv pip install` flags that reproduce this machine's pip configuration.

`make setup` installs with uv (about 10x faster than pip here) but must resolve exactly what pip
would: the same indexes, find-links folders and constraint files, and pip's "best version across all
indexes" rule (uv's default takes the first index that has a package). pip's own config is read
through `pip config list` (pip's files already merged): `install.*` wins over `global.*`, and
environment variables (`:env:.*`, from PIP_*) over both.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

RANK = {"global": 0, "install": 1, ":env:": 2}  # higher wins, as in pip
MULTI = {"extra-index-url", "find-links", "constraint"}


def pip_config() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    chosen: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if section not in RANK or not value:
            continue
        rank = RANK[section]
        value = value.strip().strip("'\"")
        if name not in chosen or rank >= chosen[name][0]:
            chosen[name] = (rank, value)
    return {name: value for name, (_, value) in chosen.items()}


def uv_flags(cfg: dict[str, str]) -> list[str]:
    flags = ["--index-strategy", "unsafe-best-match"]
    if "index-url" in cfg:
        flags += ["--index-url", cfg["index-url"]]
    for name in sorted(MULTI & cfg.keys()):
        for value in cfg[name].split():
            if name == "constraint" and not Path(value).is_file():
                continue
            flags += ["-c" if name == "constraint" else f"--{name}", value]
    if cfg.get("no-index", "").lower() in ("1", "true", "yes", "on"):
        flags.append("--no-index")
    if "cert" in cfg:
        flags.append("--native-tls")  # pip's cert bundle is the system store here; uv reads it this way
    return flags


if __name__ == "__main__":
    print(shlex.join(uv_flags(pip_config())))
