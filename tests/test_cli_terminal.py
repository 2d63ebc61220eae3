"""The terminal a person reads: plain progress without a TTY, `--version`, `unlearn doctor`."""

from __future__ import annotations

import io
import re
from importlib import metadata

import pytest

from pipelines.cli import main
from pipelines.console import Console
from pipelines.train.progress import format_progress, progress_note

ANSI = re.compile(r"\x1b\[")


def test_plain_progress_is_one_line_per_event_without_ansi_or_carriage_returns():
    out = io.StringIO()  # not a TTY
    term = Console(out)
    assert term.live is None
    term.stage("1/2 data")
    with term.progress("sharding", 100, "records") as bar:
        for _ in range(10):
            bar.advance(10, note="batch")
    text = out.getvalue()
    assert not ANSI.search(text) and "\r" not in text
    lines = text.splitlines()
    assert lines[0] == "== 1/2 data"
    # 25, 50, 75 % marks, then the closing line (not one line per update)
    assert [ln.split(" |")[0] for ln in lines[1:4]] == [
        "[sharding] 30/100 records (30%)",
        "[sharding] 50/100 records (50%)",
        "[sharding] 80/100 records (80%)",
    ]
    assert lines[4].startswith("[sharding] 100/100 records (100%) | batch - done in ")
    assert len(lines) == 5


def test_live_progress_on_a_terminal_draws_a_bar():
    out = io.StringIO()
    term = Console(out, live=True)
    with term.progress("training", 4, "steps") as bar:
        bar.update(4, "loss 0.5")
    assert "training" in out.getvalue() and "4/4" in out.getvalue()


def test_progress_note_drops_label_and_count():
    metrics = {"step": 40, "loss": 0.4123, "steps_per_s": 4.0, "forget.leak_rate": 0.25}
    assert format_progress("x", 40, 100, metrics) == (
        "[x] step 40/100 (40%) loss 0.4123 | 4.00 steps/s, 15 s left | forget.leak_rate 0.250"
    )
    assert progress_note(metrics, 100) == "loss 0.4123 | 4.00 steps/s, 15 s left | forget.leak_rate 0.250"
    assert progress_note({"step": 1}, 10) == ""


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"unlearn {metadata.version('lvlm-unlearn')}"


def test_doctor_prints_versions_devices_cluster_and_tracking_uri(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head.example:10001")  # a client address: not probed
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    wd = tmp_path / "wd"
    assert main(["doctor", "--workdir", str(wd)]) == 0
    out = capsys.readouterr().out
    for lib in ("torch", "ray", "mlflow", "transformers", "peft"):
        assert re.search(rf"^  {lib}\s+{re.escape(metadata.version(lib))}$", out, re.M), lib
    assert re.search(r"^  cpu: \d+ cores", out, re.M)
    assert "ray cluster:  ray://head.example:10001 (from RAY_ADDRESS)" in out
    assert f"tracking URI: sqlite:///{wd.resolve() / 'mlflow.db'}" in out
    assert not wd.exists()  # doctor writes nothing


def test_doctor_without_ray_address_reports_a_local_ray(tmp_path, capsys, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the tracking server is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    assert main(["doctor", "--workdir", str(tmp_path / "wd")]) == 0
    out = capsys.readouterr().out
    assert "ray cluster:  none running: a new local Ray" in out
    assert f"tracking URI: http://127.0.0.1:{port} (from MLFLOW_TRACKING_URI) - UNUSABLE:" in out
    assert "does not answer" in out


def test_sweep_progress_shows_trials_as_they_end(monkeypatch):
    """Tune's driver-side callback: one progress display over the trials, a line per finished trial."""
    from types import SimpleNamespace

    from pipelines import console
    from pipelines.train.progress import SweepProgress, sweep_callbacks

    assert sweep_callbacks(2) == []  # no console (library use, a trial's own process): Tune's output only
    out = io.StringIO()
    monkeypatch.setattr(console, "_ACTIVE", Console(out))
    [cb] = sweep_callbacks(2)
    assert isinstance(cb, SweepProgress)
    cb.setup(total_num_samples=2)
    a = SimpleNamespace(trial_id="t_a", last_result={"step": 20, "objective": 0.25, "final": 1})
    b = SimpleNamespace(trial_id="t_b", last_result={"step": 10, "objective": 0.5})
    cb.on_trial_result(iteration=1, trials=[a, b], trial=a, result=a.last_result)
    cb.on_trial_complete(iteration=2, trials=[a, b], trial=a)
    cb.on_trial_complete(iteration=3, trials=[a, b], trial=b)
    cb.on_experiment_end(trials=[a, b])
    assert out.getvalue().splitlines() == [
        "trial t_a: finished at step 20, objective 0.25",
        "[sweep] 1/2 trials (50%) | t_a finished",
        "trial t_b: stopped early at step 10, objective 0.5",
        "[sweep] 2/2 trials (100%) | t_b stopped early - done in 0 s",
    ]


def test_doctor_says_when_ray_address_does_not_answer(capsys, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert main(["doctor"]) == 0
    assert f"ray cluster:  127.0.0.1:{port} (from RAY_ADDRESS) - UNREACHABLE:" in capsys.readouterr().out
