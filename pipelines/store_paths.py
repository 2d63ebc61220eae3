"""A workdir's MLflow store keeps absolute artifact paths; after a copy or a move they point elsewhere.

The embedded store (``WORKDIR/mlflow.db``) records its experiment's ``artifact_location``
(``file:///WORKDIR/mlartifacts``) and every run's, logged model's and model version's artifact URI as
absolute paths. After ``cp -r A B`` a command in B would write its artifacts into ``A/mlartifacts``
(after ``mv``, into a folder that no longer exists). ``check_store`` finds such paths before any work
and refuses with the fix; ``relocate`` (`unlearn relocate`) rewrites them to the store's own folder.
Plain ``sqlite3`` (read-only for the check): no MLflow import.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from unlearn_core.config import ConfigError

ARTIFACTS = "mlartifacts"  # beside mlflow.db (tracking.experiments.artifact_root)
# (table, column) pairs holding artifact locations, in the MLflow versions this project pins.
PATH_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
)


def _columns(db: sqlite3.Connection) -> list[tuple[str, str]]:
    present = []
    for table, column in PATH_COLUMNS:
        cols = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}  # noqa: S608 - fixed names
        if column in cols:
            present.append((table, column))
    return present


def _root_of(location: str) -> Path | None:
    """The folder holding ``mlartifacts`` in a local artifact location, or None for anything else."""
    path = location[len("file://") :] if location.startswith("file://") else location
    if not path.startswith("/"):
        return None
    parts = Path(path).parts
    if ARTIFACTS not in parts:
        return None
    return Path(*parts[: parts.index(ARTIFACTS)])


def foreign_roots(db_path: Path) -> dict[Path, int]:
    """Folders other than ``db_path``'s own whose ``mlartifacts`` the store points into, with how many
    locations point there."""
    home = db_path.resolve().parent
    found: dict[Path, int] = {}
    uri = f"file:{db_path.resolve()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
        for table, column in _columns(db):
            for (value,) in db.execute(f"SELECT {column} FROM {table}"):  # noqa: S608 - fixed names
                root = _root_of(value) if isinstance(value, str) else None
                if root is not None and root != home:
                    found[root] = found.get(root, 0) + 1
    return found


def check_store(db_path: Path) -> None:
    """Refuse (``ConfigError``, nothing written) when the SQLite store at ``db_path`` points its
    artifacts into another folder: a workdir copied or moved from there."""
    if not db_path.is_file():
        return
    try:
        roots = foreign_roots(db_path)
    except sqlite3.DatabaseError as err:
        raise ConfigError(f"{db_path}: not a readable MLflow SQLite store ({err})") from None
    if roots:
        old = ", ".join(str(r) for r in sorted(roots))
        folder = db_path.resolve().parent
        raise ConfigError(
            f"{db_path}: this MLflow store keeps its artifacts in {old}/{ARTIFACTS}, not beside it "
            f"(the folder was copied or moved from there); commands would write into that folder. "
            f"Fix: `unlearn relocate --workdir {folder}` (rewrites the store's paths to {folder}/{ARTIFACTS})"
        )


def relocate(db_path: Path) -> dict[str, int]:
    """Rewrite every artifact location of the store at ``db_path`` that points into another folder's
    ``mlartifacts`` to its own ``mlartifacts``, in one transaction. Returns the changed rows per
    table.column. The artifact files themselves are where the copy put them (``mlartifacts`` beside it)."""
    home = db_path.resolve().parent
    changed: dict[str, int] = {}
    with closing(sqlite3.connect(str(db_path.resolve()), timeout=30)) as db, db:
        for table, column in _columns(db):
            rows = list(db.execute(f"SELECT rowid, {column} FROM {table}"))  # noqa: S608 - fixed names
            n = 0
            for rowid, value in rows:
                root = _root_of(value) if isinstance(value, str) else None
                if root is None or root == home:
                    continue
                prefix = ("file://" if value.startswith("file://") else "") + str(root)
                new = ("file://" if value.startswith("file://") else "") + str(home) + value[len(prefix) :]
                db.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (new, rowid))  # noqa: S608
                n += 1
            if n:
                changed[f"{table}.{column}"] = n
    return changed
