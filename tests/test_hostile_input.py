"""Hostile and broken input, as a new user or an adversary would try it: every probe ends with the exit
status it should (2 for bad input, one line naming the file, row or field, no traceback on the
terminal), writes nothing outside its target and deletes nothing (the tree around it is compared
before and after), and is refused before any work (before Ray, before MLflow's retries).

Fixtures are built here in temp folders: PNG bombs, a YAML billion laughs, JSON nested 200,000 deep,
MLLMU-Bench and CLEAR parquets in their published schemas with a column of the wrong type, prediction
files, an MLflow store copied to another folder, a port nothing listens on and one that never replies.
The CLI runs in-process (``pipelines.cli.main``); the output is read at the file-descriptor level
because the console points fds 1 and 2 at its log file.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import real_fixtures as rf
from pipeline_fixtures import save_tiny_model, write_tiny_records
from test_judge import FakeChat, make_handler

from pipelines.cli import main
from unlearn_core import outputs
from unlearn_core.data import records_io

DEEP = 200_000  # the nesting of the deep-JSON probes
BILLION_LAUGHS = (
    "\n".join(
        [
            "method:",
            "  name: ga",
            "  params:",
            '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        ]
        + [f"    {n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    )
    + "\n"
)


# ------------------------------------------------------------------------------------------ helpers


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time (folders too)."""
    return {
        str(p.relative_to(folder)): (p.lstat().st_size if p.is_file() else -1, p.lstat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def run(argv: list[str], capfd) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def refused(argv: list[str], capfd, world: Path, *fragments: str, logs: str | None = None) -> str:
    """``argv`` exits 2 with ONE line on stderr holding every fragment, and ``world`` is unchanged
    (but for the command's log file in ``logs``, a workdir's ``logs/`` folder, when it got that far)."""
    before = tree(world)
    rc, _out, err = run(argv, capfd)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    after = tree(world)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    allowed = () if logs is None else (logs, str(Path(logs).parent))  # the log, its folder, the workdir
    assert all(k in allowed or (logs is not None and k.startswith(logs + "/")) for k in changed), changed
    return lines[0]


def png_header_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels: a few KB that Pillow would decode into
    width * height bytes. Compressed row by row (never the whole image in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never replies (a hung server)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture()
def world(tmp_path, monkeypatch) -> Path:
    """The user's folder the probes run in (the working directory); logs go to a folder beside it."""
    home = tmp_path / "world"
    home.mkdir()
    (home / "notes.txt").write_text("a user's file\n")
    monkeypatch.chdir(home)
    monkeypatch.setenv("UNLEARN_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return home


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    return write_tiny_records(tmp_path_factory.mktemp("records") / "records")


def _predictions(records_dir: Path, extra: list[str] = ()) -> list[str]:
    rows = records_io.read_records(records_dir).drop_columns(["image"]).to_pylist()
    return [json.dumps({"sample_id": r["sample_id"], "generation": r["answer"]}) for r in rows] + list(extra)


# ------------------------------------------------------------------------------- never lose data


def test_pull_and_shard_refuse_a_folder_they_did_not_write(world, capfd):
    (world / "out").mkdir()
    (world / "out" / "keep.txt").write_text("keep")
    for argv in (
        ["pull", "models:/lvlm-unlearn-pubg@champion", "--out", "out"],
        ["pull", "models:/lvlm-unlearn-pubg@champion", "--out", "out", "--force"],
        ["data", "shard", "--records", world, "--model", "tiny-llava", "--out", "out"],
    ):
        if argv[0] == "data":
            (world / "records_meta.json").write_text("{}")  # world passes as a records folder
        refused(argv, capfd, world, "--out out", "lvlm-unlearn did not write it", "nothing was changed")
    assert (world / "out" / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("target", [".", "..", "~", "/", "WORLD"])
def test_out_is_never_the_working_directory_a_parent_home_or_root(world, capfd, target):
    target = str(world) if target == "WORLD" else target
    for argv in (
        ["pull", "models:/m@champion", "--out", target],
        ["data", "synth", "--out", target],
        ["data", "convert", "--format", "jsonl", "--source", world, "--out", target],
    ):
        refused(argv, capfd, world, f"--out {target}", "refusing to write there")


def test_file_outputs_refuse_folders_and_files_they_did_not_write(world, capfd, records):
    (world / "folder").mkdir()
    (world / "mine.json").write_text('{"a user": "file"}')
    preds = world / "preds.jsonl"
    preds.write_text("\n".join(_predictions(records)) + "\n")
    score = ["score", "--records", records, "--predictions", preds]
    refused([*score, "--out", "folder"], capfd, world, "--out folder: a folder; name a file")
    refused([*score, "--out", "mine.json"], capfd, world, "lvlm-unlearn did not write it")
    refused([*score, "--out", "mine.json", "--force"], capfd, world, "lvlm-unlearn did not write it")
    # the project's own report: replaced only with --force, atomically
    rc, out, _ = run([*score, "--out", "report.json"], capfd)
    assert rc == 0 and "wrote report.json" in out
    first = json.loads((world / "report.json").read_text())
    assert first[outputs.WRITTEN_BY].endswith(": unlearn score") and first["n_scored"] == first["n_records"]
    refused(
        [*score, "--out", "report.json"], capfd, world, "holds an earlier output (unlearn score)", "--force"
    )
    assert run([*score, "--out", "report.json", "--force"], capfd)[0] == 0
    assert not [p for p in world.iterdir() if p.name.endswith(".partial")]


def test_folder_outputs_are_staged_marked_and_replaced_only_with_force(world, capfd):
    synth = ["data", "synth", "--people", "4", "--describe-images", "0", "--image-size", "16"]
    rc, out, _ = run([*synth, "--out", "rec"], capfd)
    assert rc == 0 and "wrote" in out
    assert outputs.folder_writer(world / "rec").endswith(": unlearn data synth")
    assert (world / "rec" / "records_meta.json").is_file()
    refused([*synth, "--out", "rec"], capfd, world, "holds an earlier output (unlearn data synth)", "--force")
    before = (world / "rec" / "records_meta.json").stat().st_ino
    assert run([*synth, "--out", "rec", "--force", "--seed", "5"], capfd)[0] == 0
    assert (world / "rec" / "records_meta.json").stat().st_ino != before  # a new folder moved in
    leftovers = [p.name for p in world.iterdir() if p.name.startswith(".rec.")]
    assert leftovers == []  # the staging folder and the old one aside are gone


def test_an_interrupted_write_leaves_the_target_as_it_was(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError), outputs.staged_folder(dest, "unlearn test") as stage:
        (stage / "half.parquet").write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    outputs.write_json(tmp_path / "r.json", {"metrics": {}}, "unlearn test")
    before = (tmp_path / "r.json").read_bytes()

    def crash(path: Path) -> None:
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        outputs.write_file(tmp_path / "r.json", crash, force=True)
    assert (tmp_path / "r.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_mask_and_eval_refuse_before_ray(world, capfd):
    (world / "m.safetensors").write_bytes(b"not ours")
    (world / "shards").mkdir()
    (world / "shards" / "manifest.json").write_text("{}")
    model = world / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llava", "text_config": 5}')
    refused(
        ["mask", "--model", "model", "--shards", "shards", "--out", "m.safetensors"],
        capfd,
        world,
        "config.json does not load",
    )
    (model / "config.json").write_text(json.dumps({"model_type": "llava"}))
    refused(
        ["mask", "--model", "model", "--shards", "shards", "--out", "m.safetensors", "--workdir", "wd"],
        capfd,
        world,
        "--out m.safetensors",
        "lvlm-unlearn did not write it",
    )
    ev = ["eval", "--model", "model", "--shards", "shards", "--workdir", "wd"]
    refused([*ev, "--out", "notes.txt"], capfd, world, "--out notes.txt", "lvlm-unlearn did not write it")
    refused([*ev, "--out", "e.json", "--max-per-group", "-1"], capfd, world, "--max-per-group: must be >= 1")
    refused(
        [
            *ev,
            "--out",
            "e.json",
            "--judge-url",
            f"http://127.0.0.1:{closed_port()}/v1",
            "--judge-model",
            "j",
            "--judge-key-env",
            "",
        ],
        capfd,
        world,
        "--judge-url",
        "does not answer",
    )
    refused(
        [
            *ev,
            "--out",
            "e.json",
            "--judge-url",
            "http://127.0.0.1:1/v1",
            "--judge-model",
            "j",
            "--judge-key-env",
            "NO_SUCH_KEY_VAR",
        ],
        capfd,
        world,
        "NO_SUCH_KEY_VAR",
        "not set",
    )
    refused(
        ["finetune", "--name", "../../escape", "--workdir", "wd"], capfd, world, "--name", "plain folder name"
    )


# ------------------------------------------------------------------------ a workdir is its own


def _store_with_artifact(workdir: Path, monkeypatch, capfd) -> str:
    """A workdir's SQLite store with an experiment, a run holding an artifact and a registered model
    without versions. (MLflow's set_tracking_uri also sets $MLFLOW_TRACKING_URI: unset again.)"""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines.tracking import ensure_experiment

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    exp = ensure_experiment(uri, "lvlm-unlearn", workdir)
    client = MlflowClient(uri)
    run_id = client.create_run(exp).info.run_id
    client.log_text(run_id, "first", "note.txt")
    client.create_registered_model("tiny")
    mlflow.set_tracking_uri(None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    capfd.readouterr()
    return run_id


def test_a_copied_workdir_never_writes_into_the_original(world, capfd, monkeypatch):
    from mlflow.tracking import MlflowClient

    a = world / "A"
    run_id = _store_with_artifact(a, monkeypatch, capfd)
    assert (a / "mlartifacts").is_dir()
    b = world / "B"
    shutil.copytree(a, b)
    a_before = tree(a)
    fix = f"unlearn relocate --workdir {b}"
    refused(["pull", "models:/tiny@champion", "--out", "p", "--workdir", "B"], capfd, world, str(a), fix)
    rc, out, _ = run(["doctor", "--workdir", "B"], capfd)
    assert rc == 0 and "UNUSABLE" in out and fix in out
    rc, out, _ = run(["relocate", "--workdir", "B"], capfd)
    assert rc == 0 and "experiments.artifact_location: 1 rewritten" in out and "runs.artifact_uri: 1" in out
    # B now keeps its artifacts in B: the same pull gets past the check and reaches the registry
    line = refused(
        ["pull", "models:/tiny@champion", "--out", "p", "--workdir", "B"],
        capfd,
        world,
        "alias",
        logs="B/logs",
    )
    assert "has no alias 'champion'" in line
    client = MlflowClient(f"sqlite:///{b / 'mlflow.db'}")
    assert client.get_run(run_id).info.artifact_uri.startswith((b / "mlartifacts").as_uri())
    # (logging to the old run here would hit MLflow's per-process artifact-repo cache of run_id -> A;
    # a command is a fresh process) a new run of the relocated experiment writes into B only
    new_run = client.create_run(client.get_experiment_by_name("lvlm-unlearn").experiment_id).info.run_id
    client.log_text(new_run, "second", "more.txt")
    assert any((b / "mlartifacts").rglob("more.txt")) and tree(a) == a_before


def test_a_moved_workdir_is_refused_until_relocated(world, capfd, monkeypatch):
    _store_with_artifact(world / "A", monkeypatch, capfd)
    (world / "A").rename(world / "C")
    refused(["pull", "models:/tiny@x", "--out", "p", "--workdir", "C"], capfd, world, "unlearn relocate")
    assert run(["relocate", "--workdir", "C"], capfd)[0] == 0
    refused(
        ["pull", "models:/tiny@x", "--out", "p", "--workdir", "C"],
        capfd,
        world,
        "has no alias 'x'",
        logs="C/logs",
    )


def test_pull_of_an_unknown_model_or_alias_names_it(world, capfd, monkeypatch):
    _store_with_artifact(world / "wd", monkeypatch, capfd)
    refused(
        ["pull", "models:/nope@champion", "--out", "p", "--workdir", "wd"],
        capfd,
        world,
        "no registered model 'nope'",
        "registered: tiny",
        logs="wd/logs",
    )
    refused(
        ["pull", "models:/tiny/7", "--out", "p", "--workdir", "wd"],
        capfd,
        world,
        "has no version 7",
        logs="wd/logs",
    )


# ------------------------------------------------------------------------------- never hang


def test_yaml_billion_laughs_is_refused_at_once(world, capfd):
    (world / "bomb.yaml").write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS.encode()) == 407
    t0 = time.perf_counter()
    refused(
        ["run", "--config", "bomb.yaml", "--workdir", "wd"], capfd, world, "bomb.yaml", "YAML aliases expand"
    )
    bomb = (
        "{a: &a [1,1,1,1,1,1,1,1,1], "
        + ", ".join(
            f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefg", "bcdefgh", strict=True)
        )
        + "}"
    )
    refused(
        ["run", "--method", "ga", "--set", f"method.params={bomb}", "--workdir", "wd"],
        capfd,
        world,
        "--set method.params",
        "YAML aliases expand",
    )
    (world / "loop.yaml").write_text("method: &m\n  name: ga\n  params: *m\n")
    refused(["run", "--config", "loop.yaml", "--workdir", "wd"], capfd, world, "loop.yaml")
    (world / "latin1.yaml").write_bytes("method:\n  name: caf\xe9\n".encode("latin-1"))
    refused(["run", "--config", "latin1.yaml", "--workdir", "wd"], capfd, world, "latin1.yaml", "not UTF-8")
    refused(
        ["run", "--method", "ga", "--set", "train.lr=.nan", "--workdir", "wd"],
        capfd,
        world,
        "train.lr: must be a number, got nan",
    )
    assert time.perf_counter() - t0 < 20


def test_unreachable_tracking_server_is_reported_within_seconds(world, capfd, monkeypatch, silent_port):
    for port, why in ((closed_port(), "Connection refused"), (silent_port, "no reply within")):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        t0 = time.perf_counter()
        refused(
            ["pull", "models:/m@champion", "--out", "p"],
            capfd,
            world,
            f"http://127.0.0.1:{port} does not answer",
            why,
            "MLFLOW_TRACKING_URI",
        )
        assert time.perf_counter() - t0 < 12
    rc, out, _ = run(["doctor", "--workdir", "wd"], capfd)
    assert rc == 0 and f"http://127.0.0.1:{silent_port} (from MLFLOW_TRACKING_URI) - UNUSABLE" in out
    assert not (world / "wd").exists()


# --------------------------------------------------------------------------------- bounded input


def _jsonl_source(folder: Path, lines: list[str | bytes]) -> Path:
    rf.write_jsonl_folder(folder)
    (folder / "img" / "bomb.png").write_bytes(png_header_bomb(13_000, 13_000))
    data = (folder / "records.jsonl").read_bytes()
    extra = [x if isinstance(x, bytes) else x.encode() for x in lines]
    (folder / "records.jsonl").write_bytes(data + b"\n".join(extra) + (b"\n" if extra else b""))
    return folder


def test_bad_jsonl_lines_are_quarantined_and_counted(world, capfd, tmp_path):
    bomb = {**rf.jsonl_records()[0], "sample_id": "bomb", "image": "img/bomb.png"}
    big = {**rf.jsonl_records()[1], "sample_id": "big", "answer": "x" * (17 << 20)}  # over 16 MiB
    number = '{"sample_id": "num", "answer": ' + "9" * 5000 + "}"
    src = _jsonl_source(
        tmp_path / "src",
        [
            json.dumps(bomb),
            json.dumps(big),
            number,
            '{"sample_id": "deep", "x": ' + deep_json() + "}",
            b"\xff\xfe",
        ],
    )
    assert len(png_header_bomb(13_000, 13_000)) < 200_000
    rc, out, _ = run(["data", "convert", "--format", "jsonl", "--source", src, "--out", "rec"], capfd)
    assert rc == 0 and "read 8 = written 3 + quarantined 5" in out
    reasons = {
        json.loads(q["row"]).get("sample_id", q["origin"]): q["reason"]
        for q in records_io.read_quarantine(world / "rec").to_pylist()
    }
    assert "169,000,000 pixels, over the limit of 50,000,000 (UNLEARN_MAX_IMAGE_PIXELS)" in reasons["bomb"]
    assert any("over the 16777216 allowed (UNLEARN_MAX_LINE_BYTES)" in r for r in reasons.values())
    assert any("a JSON number Python cannot read" in r for r in reasons.values())
    assert any("nested deeper than 64 levels" in r for r in reasons.values())
    assert any("not valid UTF-8" in r for r in reasons.values())


def test_the_pixel_limit_is_configurable_and_checked_again_when_sharding(tmp_path, monkeypatch):
    from unlearn_core.data.encode import prepare_image
    from unlearn_core.data.validate import ImageChecker

    ok = rf.png_bytes(size=(40, 40))
    assert ImageChecker().problem(ok) is None
    monkeypatch.setenv("UNLEARN_MAX_IMAGE_PIXELS", "1000")
    assert "1,600 pixels, over the limit of 1,000" in ImageChecker().problem(ok)
    with pytest.raises(ValueError, match="over the limit of 1,000"):
        prepare_image(ok, 16)


def test_nothing_usable_exits_2_and_writes_nothing(world, capfd, tmp_path, records):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "records.jsonl").write_text('{"sample_id": "a"}\n[1, 2]\n')
    refused(
        ["data", "convert", "--format", "jsonl", "--source", bad, "--out", "rec"],
        capfd,
        world,
        "all 2 records were quarantined",
        "records.jsonl#1",
    )
    (bad / "records.jsonl").write_text("")
    refused(
        ["data", "convert", "--format", "jsonl", "--source", bad, "--out", "rec"],
        capfd,
        world,
        "no records found",
    )
    empty = tmp_path / "empty"
    records_io.write_records([], empty, source="synthetic")
    refused(["data", "validate", empty], capfd, world, "no records")
    preds = tmp_path / "other.jsonl"
    preds.write_text('{"sample_id": "x-1", "generation": "a"}\n{"sample_id": "x-2", "generation": "b"}\n')
    refused(
        ["score", "--records", records, "--predictions", preds, "--out", "s.json"],
        capfd,
        world,
        "none of its sample_ids is a record",
        "'x-1'",
    )
    log = next((tmp_path / "logs").glob("score-*.log")).read_text()
    assert "Traceback" in log and "NothingUsable" in log  # the terminal got one line, the log the rest


def test_deep_json_in_records_is_a_validation_problem(world, capfd, tmp_path, records):
    rows = records_io.read_records(records).to_pylist()
    rows[0]["private_facts"] = deep_json(DEEP)
    poisoned = tmp_path / "poisoned"
    records_io.write_records(rows, poisoned, source="synthetic")
    line = refused(["data", "validate", poisoned], capfd, world, "problem(s)")
    assert f"{rows[0]['sample_id']!r}): private_facts: JSON nested deeper than 64 levels" in line


def test_bad_prediction_lines_are_counted_not_fatal(world, capfd, tmp_path, records):
    good = _predictions(records)
    ids = [json.loads(x)["sample_id"] for x in good]
    bad = [
        '{"sample_id": "d", "x": ' + deep_json() + "}",
        '{"sample_id": "n", "x": ' + "1" * 5000 + "}",
        json.dumps({"sample_id": ids[0], "option_scores": ["a", "b"]}),  # a duplicate id: counted as such
        "x" * (17 << 20),
    ]
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(
        "\n".join([*good[1:], *bad]).encode() + b"\n\xff\xfe not utf-8\n" + good[0].encode() + b"\n"
    )
    rc, out, _ = run(["score", "--records", records, "--predictions", preds, "--out", "s.json"], capfd)
    assert rc == 0
    report = json.loads((world / "s.json").read_text())
    unreadable = report["problems"]["unreadable_lines"]
    assert unreadable["count"] == 4, unreadable
    assert any("nested deeper" in x for x in unreadable["first"])
    assert any("not UTF-8" in x for x in unreadable["first"])
    assert any("over the limit" in x for x in unreadable["first"])
    assert report["n_scored"] == len(ids) - 1  # ids[0] came first as the bad line (duplicate later)
    assert report["problems"]["invalid_scores"]["first"] == [f"{ids[0]}: option_scores"]


@pytest.mark.parametrize(
    ("fields", "invalid"),
    [
        ({"option_scores": [[1.0], {"a": 2}]}, "option_scores"),
        ({"option_scores": ["x", "y", "z", "w"]}, "option_scores"),
        ({"paraphrased_loss": 1.0, "perturbed_losses": [[1.0, 2.0]]}, "perturbed_losses"),
        ({"paraphrased_loss": -1e308, "perturbed_losses": [1e308, 1e308]}, "paraphrased_loss"),
        ({"paraphrased_loss": "1", "perturbed_losses": [1.0]}, "paraphrased_loss"),
    ],
)
def test_clear_scores_and_losses_that_cannot_be_used_are_counted(world, capfd, tmp_path, fields, invalid):
    rf.write_clear(tmp_path / "src")
    from unlearn_core.data.adapters import convert

    convert("clear", tmp_path / "src", tmp_path / "rec")
    rows = records_io.read_records(tmp_path / "rec").drop_columns(["image"]).to_pylist()
    target = next(r for r in rows if r["answer_variants"] not in ("{}", None))
    lines = [{"sample_id": r["sample_id"], "generation": r["answer"]} for r in rows]
    for line in lines:
        if line["sample_id"] == target["sample_id"]:
            line.update(fields)
    other = next(x for x in lines if x["sample_id"] != target["sample_id"] and "mc" not in x["sample_id"])
    other.update({"paraphrased_loss": 1e308, "perturbed_losses": [1e308, 0.0]})  # extreme, still usable
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    argv = [
        "score",
        "--records",
        tmp_path / "rec",
        "--predictions",
        preds,
        "--protocol",
        "clear",
        "--out",
        "s.json",
    ]
    rc, _out, _ = run(argv, capfd)
    assert rc == 0
    report = json.loads((world / "s.json").read_text())
    assert f"{target['sample_id']}: {invalid}" in report["problems"]["invalid_scores"]["first"]
    assert all(v == v for v in report["metrics"].values() if isinstance(v, float)), report["metrics"]


# ---------------------------------------------------------- poisoned benchmark parquets (real schemas)


def _int_column(folder: Path, column: str) -> None:
    for f in folder.glob("*.parquet"):
        table = pq.read_table(f)
        i = table.schema.get_field_index(column)
        pq.write_table(table.set_column(i, pa.field(column, pa.int64()), pa.array([7] * table.num_rows)), f)


@pytest.mark.parametrize(
    ("config", "column", "reason"),
    [
        ("forget_5", "Generation_Task", "Generation_Task: expected a list, got int"),
        ("forget_5", "Classification_Task", "Classification_Task: expected a struct, got int"),
        ("Test_Set", "images", "images: expected a list of images, got int"),
    ],
)
def test_mllmu_bench_columns_of_the_wrong_type_are_quarantined(
    world, capfd, tmp_path, config, column, reason
):
    src = rf.write_mllmu_bench(tmp_path / "src")
    _int_column(src / config, column)
    rc, out, _ = run(["data", "convert", "--format", "mllmu-bench", "--source", src, "--out", "rec"], capfd)
    assert rc == 0 and "quarantined" in out
    quarantine = records_io.read_quarantine(world / "rec").to_pylist()
    assert quarantine and all(q["origin"].startswith(f"{config}/train-") for q in quarantine)
    assert all(reason in q["reason"] for q in quarantine)


def test_clear_perturbed_captions_of_the_wrong_type_are_quarantined(world, capfd, tmp_path):
    src = rf.write_clear(tmp_path / "src")
    _int_column(src / "forget10_perturbed", "perturbed_captions")
    rc, _out, _ = run(["data", "convert", "--format", "clear", "--source", src, "--out", "rec"], capfd)
    assert rc == 0
    (q,) = records_io.read_quarantine(world / "rec").to_pylist()
    assert q["origin"] == "forget10_perturbed/train-00000-of-00001.parquet#0"
    assert q["reason"] == "perturbed_captions: expected a list of str, got int"
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(
        ["data", "convert", "--format", "clear", "--source", empty, "--out", "r2"],
        capfd,
        world,
        "forget10/train-*.parquet",
    )


# ------------------------------------------------------------- the suite's writers stay in their folders


def test_commands_write_only_their_target_and_their_log(world, capfd, tmp_path, records):
    """The writers the suite runs (convert, validate, score, pull's refusal) from a folder holding a
    `workdir/`: the folder changes only where --out points, the logs go to UNLEARN_LOG_DIR."""
    (world / "workdir" / "logs").mkdir(parents=True)
    (world / "workdir" / "logs" / "old.log").write_text("old")
    src = rf.write_jsonl_folder(tmp_path / "src")
    preds = tmp_path / "p.jsonl"
    preds.write_text("\n".join(_predictions(records)) + "\n")
    before = tree(world)
    for argv in (
        ["data", "convert", "--format", "jsonl", "--source", src, "--out", "rec"],
        ["data", "validate", "rec"],
        ["score", "--records", records, "--predictions", preds, "--out", "s.json"],
    ):
        assert run(argv, capfd)[0] == 0
    after = tree(world)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert {c.split("/")[0] for c in changed} == {"rec", "s.json"}, changed
    logs = sorted(p.name.rsplit("-", 3)[0] for p in (tmp_path / "logs").iterdir())
    assert logs == ["data-convert", "data-validate", "score"]


# --------------------------------------------------------------- sharding and a failing judge (Ray)


@pytest.mark.slow
def test_shard_keeps_siblings_reuses_its_cache_and_a_failing_judge_keeps_the_metrics(
    ray_local, world, capfd, records
):
    for sibling in ("shards.staging", "shards.download"):  # the names the old code wiped
        (world / sibling).mkdir()
        (world / sibling / "keep.txt").write_text("keep")
    shard = [
        "data",
        "shard",
        "--records",
        records,
        "--model",
        "tiny-llava",
        "--image-size",
        "32",
        "--out",
        "shards",
    ]
    rc, out, _ = run(shard, capfd)
    assert rc == 0 and "shards built" in out
    assert all((world / s / "keep.txt").read_text() == "keep" for s in ("shards.staging", "shards.download"))
    assert outputs.folder_writer(world / "shards").endswith(": unlearn data shard")
    rc, out, _ = run(shard, capfd)
    assert rc == 0 and "cached (fingerprint unchanged)" in out
    refused([*shard[:-3], "24", "--out", "shards"], capfd, world, "fingerprint", "--force")

    model = save_tiny_model(world / "shards", world / "model")
    # test_judge's endpoint: it answers (GET is "501 unsupported": up), then refuses our missing key (401)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(FakeChat()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        argv = [
            "eval",
            "--model",
            model,
            "--shards",
            "shards",
            "--out",
            "e.json",
            "--max-per-group",
            "2",
            "--workdir",
            "wd",
            "--judge-url",
            url,
            "--judge-model",
            "judge",
            "--judge-key-env",
            "",
        ]
        rc, _out, err = run(argv, capfd)
    finally:
        server.shutdown()
        server.server_close()
    assert rc == 1 and "judge failed" in err and "the judge.* scores are missing" in err
    report = json.loads((world / "e.json").read_text())
    assert report["judge"]["status"] == "failed" and "HTTP 401" in report["judge"]["error"]
    assert report["metrics"] and not any(k.startswith("judge.") for k in report["metrics"])
