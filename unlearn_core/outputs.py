"""Where commands write: never over something the project did not write, never half a result.

The rule, the same for every command that writes a folder or a file (`data synth|convert|shard`,
`pull`, `mask`, `eval --out`, `score --out`):

- The target must not exist, or be an empty folder. An existing target is refused before any work
  with one line naming it and the fix; ``--force`` replaces it, and only when lvlm-unlearn wrote it:
  a folder holding the marker file ``.lvlm-unlearn.json`` (written last into every output folder,
  naming the command), a JSON or safetensors file whose ``written_by`` field names the project.
- ``.``, the working directory, any folder above it, the home folder and ``/`` are refused as
  targets, with or without ``--force``.
- A folder is built in a new temporary folder beside the target (``tempfile.mkdtemp`` in the same
  parent) and renamed into place; with ``--force`` the old folder is first renamed aside, then the new
  one in, then the old one removed. A file is written to a temporary file beside it and moved with
  ``os.replace``. An interrupted command leaves the target as it was.

Nothing here deletes a path it did not create in this process (its own temporary folders and the
old output it has just checked to be the project's).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unlearn_core.config import ConfigError

MARKER = ".lvlm-unlearn.json"  # in every output folder: {"written_by": "unlearn data shard", ...}
WRITTEN_BY = "written_by"  # the field naming the command, in the marker and in JSON/safetensors outputs
PROJECT = "lvlm-unlearn"
_HEADER_MAX = 16 * 1024 * 1024  # a safetensors header larger than this is not one we wrote


class OutputError(ConfigError):
    """An output location is refused; the message names it and the fix. Nothing was written."""


def stamp(command: str) -> str:
    """The ``written_by`` value of an output: ``"lvlm-unlearn <version>: unlearn data shard"``."""
    try:
        from importlib.metadata import version

        ver = version(PROJECT)
    except Exception:  # noqa: BLE001 - a checkout run without installing
        ver = "unknown"
    return f"{PROJECT} {ver}: {command}"


def _is_project_stamp(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PROJECT + " ")


# ------------------------------------------------------------------------------------ who wrote it


def folder_writer(folder: Path) -> str | None:
    """The command that wrote ``folder`` (from its marker), or None when the project did not write it."""
    marker = folder / MARKER
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 64 * 1024:
            return None
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    value = data.get(WRITTEN_BY) if isinstance(data, dict) else None
    return value if _is_project_stamp(value) else None


def file_writer(path: Path) -> str | None:
    """The command that wrote ``path`` (a JSON report's or a safetensors header's ``written_by``),
    or None when the project did not write it (any other file, or one it cannot read)."""
    try:
        if path.is_symlink() or not path.is_file():
            return None
        if path.suffix == ".safetensors":
            with path.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size <= _HEADER_MAX:
                    return None
                header = json.loads(fh.read(size).decode("utf-8"))
            meta = header.get("__metadata__") if isinstance(header, dict) else None
            value = meta.get(WRITTEN_BY) if isinstance(meta, dict) else None
        else:
            with path.open("rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
            value = data.get(WRITTEN_BY) if isinstance(data, dict) else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if _is_project_stamp(value) else None


# ------------------------------------------------------------------------------------ the checks


def _refuse_protected(path: Path, field: str, shown: str | Path) -> None:
    """``.``, the working directory, its parents, the home folder and ``/`` are never targets."""
    path = Path(shown)
    real = Path(os.path.abspath(path.expanduser())).resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor) or cwd.is_relative_to(real):
        what = "the working directory" if real == cwd else "a folder that holds the working directory"
        raise OutputError(
            f"{field} {path}: {what}; refusing to write there. Name a new folder, e.g. {field} ./out"
        )
    home = Path.home().resolve()
    if real == home:
        raise OutputError(f"{field} {path}: the home folder; refusing to write there. Name a new folder")


def _parents_usable(path: Path, field: str) -> None:
    for q in path.parents:
        if q.exists():
            if not q.is_dir():
                raise OutputError(f"{field} {path}: {q} is a file, not a folder; choose another path")
            return


def check_folder(
    path: str | Path,
    field: str = "--out",
    *,
    force: bool = False,
    reuse: str | None = None,
    recognise: Callable[[Path], str | None] | None = None,
) -> Path:
    """An output folder can be written (see the module rule); returns it absolute. Nothing is touched.

    ``reuse``: a command that keeps its output as a cache (`data shard`) may find its own earlier
    output there without ``--force``; it decides itself whether that output is up to date (and needs
    ``force`` to replace it). ``recognise``: how that command knows its outputs written before the
    marker existed (returns the writer's name, or None).
    """
    p = Path(os.path.abspath(Path(path).expanduser()))
    _refuse_protected(p, field, path)
    _parents_usable(p, field)
    if p.is_symlink():
        raise OutputError(f"{field} {path}: a symbolic link; name the folder itself or a new one")
    if not p.exists():
        return p
    if not p.is_dir():
        raise OutputError(f"{field} {path}: a file, not a folder; choose a new folder")
    if not any(p.iterdir()):
        return p
    writer = folder_writer(p) or (recognise(p) if recognise is not None else None)
    if writer is None:
        raise OutputError(
            f"{field} {path}: exists and is not empty, and lvlm-unlearn did not write it (no {MARKER}); "
            "nothing was changed. Choose a new folder, or empty this one yourself"
        )
    if force or (reuse is not None and writer.endswith(": " + reuse)):
        return p
    raise OutputError(
        f"{field} {path}: holds an earlier output ({writer.split(': ', 1)[-1]}); nothing was changed. "
        "Pass --force to replace it, or choose a new folder"
    )


def check_file(path: str | Path, field: str = "--out", *, force: bool = False) -> Path:
    """An output file can be written (see the module rule); returns it absolute. Nothing is touched."""
    p = Path(os.path.abspath(Path(path).expanduser()))
    _refuse_protected(p, field, path)
    _parents_usable(p, field)
    if p.is_dir():
        raise OutputError(f"{field} {path}: a folder; name a file, e.g. {field} {Path(path) / 'out.json'}")
    if p.is_symlink():
        raise OutputError(f"{field} {path}: a symbolic link; name the file itself or a new one")
    if not p.exists():
        return p
    writer = file_writer(p)
    if writer is None:
        raise OutputError(
            f"{field} {path}: exists and lvlm-unlearn did not write it; nothing was changed. Choose "
            "another path"
        )
    if not force:
        raise OutputError(
            f"{field} {path}: holds an earlier output ({writer.split(': ', 1)[-1]}); nothing was changed. "
            "Pass --force to replace it, or choose another path"
        )
    return p


# ------------------------------------------------------------------------------------- the writes


def new_stage(dest: Path) -> Path:
    """A new empty temporary folder beside ``dest`` (same file system: the final rename is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))


def discard(stage: Path) -> None:
    """Remove a folder ``new_stage`` made (never anything else: the name is checked)."""
    if stage.name.startswith(".") and stage.name.endswith(".partial"):
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_folder(
    target: str | Path, command: str, *, field: str = "--out", force: bool = False
) -> Iterator[Path]:
    """Yield a new temporary folder beside ``target``; when the block completes, move it into place as
    written by ``command`` (``publish_folder``). On an error it is removed and ``target`` is untouched."""
    dest = check_folder(target, field, force=force)
    stage = new_stage(dest)
    try:
        yield stage
        publish_folder(stage, dest, command, field=field, force=force)
    except BaseException:
        discard(stage)
        raise


def publish_folder(
    stage: Path,
    dest: Path,
    command: str,
    *,
    field: str = "--out",
    force: bool = False,
    recognise: Callable[[Path], str | None] | None = None,
) -> None:
    """Mark ``stage`` as written by ``command`` and move it to ``dest`` atomically. An existing ``dest``
    is replaced only when ``force`` and the project wrote it: moved aside, ``stage`` moved in, then the
    old one removed."""
    (stage / MARKER).write_text(json.dumps({WRITTEN_BY: stamp(command)}, indent=1) + "\n", encoding="utf-8")
    try:
        os.rename(stage, dest)  # dest missing or an empty folder: one atomic rename
        return
    except OSError:
        if not dest.exists():
            raise
    # checked again: it may have changed since the command began
    check_folder(dest, field, force=force, recognise=recognise)
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, aside / "old")
    try:
        os.rename(stage, dest)
    except BaseException:
        os.rename(aside / "old", dest)
        os.rmdir(aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)  # the project's own earlier output, checked above


def publish_file(src: Path, dest: str | Path, *, field: str = "--out", force: bool = False) -> Path:
    """Move a finished file (written beside ``dest``, e.g. in a ``new_stage`` folder) into place with
    ``os.replace``, after checking ``dest`` once more (``check_file``)."""
    target = check_file(dest, field, force=force)
    os.replace(src, target)
    return target


def write_file(
    path: str | Path,
    write: Callable[[Path], None] | bytes | str,
    *,
    field: str = "--out",
    force: bool = False,
) -> Path:
    """Write a file atomically: ``write(tmp)`` (or the bytes / text) into a temporary file beside
    ``path``, then ``os.replace``. ``path`` is checked first (``check_file``); returns it absolute."""
    dest = check_file(path, field, force=force)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        if isinstance(write, bytes):
            tmp.write_bytes(write)
        elif isinstance(write, str):
            tmp.write_text(write, encoding="utf-8")
        else:
            write(tmp)
        check_file(dest, field, force=force)  # again, just before replacing
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)  # our own temporary file
        raise
    return dest


def write_json(path: str | Path, report: dict[str, Any], command: str, *, force: bool = False) -> Path:
    """A JSON report stamped ``written_by`` (so a later ``--force`` may replace it), written atomically."""
    data = {WRITTEN_BY: stamp(command), **{k: v for k, v in report.items() if k != WRITTEN_BY}}
    return write_file(path, json.dumps(data, indent=1, ensure_ascii=False), force=force)
