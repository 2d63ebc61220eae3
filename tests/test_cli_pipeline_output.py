"""A short real pipeline through the CLI, as a CI job sees it (no TTY): readable plain output, Ray's
and the libraries' logs in the workdir's log file, and no deprecated call made by our own code
(``tests/deprecation_guard/sitecustomize.py`` turns those into errors in the driver and every Ray
worker)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.pipeline_fixtures import TINY_SYNTH, write_tiny_records
from tests.ray_head import short_temp_dir

ROOT = Path(__file__).resolve().parent.parent
GUARD = ROOT / "tests" / "deprecation_guard"
UNLEARN = Path(sys.executable).parent / "unlearn"
SMALL = [
    "--set",
    f"synth.image_size={TINY_SYNTH.image_size}",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.eval_max_samples=4",
    "--set",
    "train.warmup_steps=0",
]


def _guarded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD), str(ROOT)])
    env["DEPRECATION_LOG"] = str(tmp_path / "deprecations.log")
    env.setdefault("RAY_TMPDIR", str(short_temp_dir("rc")))  # Ray's socket paths must stay short
    return env


def test_guard_fails_our_deprecated_calls_only(tmp_path):
    """The guard itself: a deprecated call from a ``pipelines`` module raises; the same deprecated
    function called by a library on its own does not."""
    lib = tmp_path / "somelib.py"
    lib.write_text(
        textwrap.dedent("""
        import warnings
        def old():
            warnings.warn("old() is deprecated", DeprecationWarning)
            return 1
        def internal():
            return old()
    """)
    )
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "caller.py").write_text(
        "import somelib\ndef call():\n    return somelib.old()\n"
    )
    script = (
        "import sys; sys.path[:0] = [{root!r}, {pkg!r}]\nimport somelib\nassert somelib.internal() == 1\n"
        "import importlib.util as u\nspec = u.spec_from_file_location('caller', {caller!r})\n"
        "m = u.module_from_spec(spec); spec.loader.exec_module(m)\nm.call()\n"
    ).format(
        root=str(tmp_path), pkg=str(tmp_path / "pipelines"), caller=str(tmp_path / "pipelines" / "caller.py")
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=_guarded_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1
    assert (
        "DeprecationWarning: deprecated call from our code: DeprecationWarning: old() is deprecated"
        in out.stderr
    )
    assert "pipelines/caller.py" in (tmp_path / "deprecations.log").read_text()


@pytest.mark.slow
def test_short_pipeline_plain_output_log_file_and_no_deprecated_calls(tmp_path):
    wd = tmp_path / "wd"
    write_tiny_records(wd / "records")
    env = _guarded_env(tmp_path)
    outputs = {}
    for name, argv in (
        ("finetune", ["finetune", "--steps", "4"]),
        ("run", ["run", "--method", "ga", "--steps", "2"]),
    ):
        out = subprocess.run(
            [str(UNLEARN), *argv, "--workdir", str(wd), *SMALL],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert out.returncode == 0, f"{name}: {out.stdout}\n{out.stderr}"
        outputs[name] = out
    assert not (tmp_path / "deprecations.log").exists()

    for name, out in outputs.items():
        text = out.stdout
        assert "\x1b" not in text and "\r" not in text, name
        logs = re.findall(r"^log: (\S+) \(Ray and library output; --verbose shows it here\)$", text, re.M)
        assert len(logs) == 1, text
        log = Path(logs[0])
        assert log.parent == wd / "logs" and log.is_file()
        assert "Started a local Ray instance" in log.read_text()  # Ray's own lines went to the file ...
        assert "Ray instance" not in text and "pid=" not in text  # ... and not to the terminal
        assert out.stderr == ""
        lines = text.splitlines()
        assert re.search(r"^\[evaluating\] \d+/\d+ rows \(100%\) - done in \d+ s$", text, re.M), text
        assert len(lines) < 60, text
    train = outputs["run"].stdout
    assert re.search(
        r"^\[unlearn-ga-\w+\] 2/2 steps \(100%\) \| loss [-\d.e]+ .* - done in \d+ s$", train, re.M
    ), train
    assert re.search(r"^forget\.leak_rate\s+low\s+[\d.]+\s+[\d.]+$", train, re.M), train  # the results table
    assert re.search(r"^\[finetune-vanilla-\w+\] 4/4 steps \(100%\)", outputs["finetune"].stdout, re.M)
