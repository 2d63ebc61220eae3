"""Validation first: each bad input of the `unlearn` CLI gives its message and a non-zero exit before Ray
starts, and leaves the workdir exactly as it was (nothing created, nothing written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _tree(folder: Path) -> list[tuple[str, int, int]]:
    """Every path under ``folder`` with its size and mtime (the workdir's state)."""
    if not folder.exists():
        return []
    return sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
    )


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """An existing workdir with a records folder, as a previous `unlearn data synth` leaves it."""
    wd = tmp_path / "wd"
    (wd / "records").mkdir(parents=True)
    (wd / "records" / "records_meta.json").write_text("{}")
    (wd / "shards").mkdir()
    (wd / "shards" / "manifest.json").write_text("{}")
    return wd


@pytest.fixture()
def spaces(tmp_path: Path) -> Path:
    folder = tmp_path / "spaces"
    folder.mkdir()
    (folder / "bad_method.yaml").write_text(
        "method: nope\nspace:\n  train.lr: {loguniform: [1.0e-5, 1.0e-3]}\n"
    )
    (folder / "bad_range.yaml").write_text("method: ga\nspace:\n  train.lr: {uniform: [-1.0, 1.0e-3]}\n")
    (folder / "bad_param.yaml").write_text(
        "method: npo\nspace:\n  method.params.beta: {uniform: [-5.0, 1.0]}\n"
    )
    (folder / "bad_key.yaml").write_text("method: ga\nspace:\n  train.nope: {choice: [1, 2]}\n")
    (folder / "broken.yaml").write_text("train: {lr: [1\n")
    return folder


def _vanilla(wd: Path) -> None:
    (wd / "models" / "vanilla").mkdir(parents=True)
    (wd / "models" / "vanilla" / "config.json").write_text('{"model_type": "llava"}')


# (argv with WD/SPACES placeholders, fragments the error message must contain)
CASES = [
    (
        ["run", "--method", "no_such_method"],
        ["method.name", "unknown method 'no_such_method'", "valid:", "ga"],
    ),
    (["run", "--method", "ga", "--set", "train.lr=-1"], ["train.lr", "greater than 0"]),
    (["run", "--method", "npo", "--set", "method.params.beta=-1"], ["method.params.beta", "valid"]),
    (["run", "--method", "ga", "--set", "method.params.nope=1"], ["method.params.nope", "valid fields"]),
    (["run", "--set", "no.such=1"], ["unknown config field: no.such"]),
    (["run", "--set", "train.lr"], ["--set expects KEY=VALUE"]),
    (["run", "--config", "WD/missing.yaml"], ["config file not found", "missing.yaml"]),
    (["run", "--config", "SPACES/broken.yaml"], ["--config", "broken.yaml: not valid YAML"]),
    (["run", "--method", "ga", "--set", "train.lr=[1"], ["--set 'train.lr=[1'", "not valid YAML"]),
    (
        ["run", "--method", "ga", "--model", "WD/no_model"],
        ["model.spec", "no_model", "neither an existing model folder"],
    ),
    (["run", "--method", "ga", "--model", "WD/records"], ["model.spec", "not a model folder", "config.json"]),
    (
        ["run", "--method", "ga", "--set", "records=WD/shards"],
        ["records:", "not a records folder", "shards folder"],
    ),
    (
        ["run", "--method", "ga", "--set", "shards=WD/records"],
        ["shards:", "not a shards folder", "unlearn data shard"],
    ),
    (
        ["eval", "--model", "WD/badmodel", "--shards", "WD/shards", "--out", "WD/e.json"],
        ["--model", "badmodel/config.json has no model_type"],
    ),
    (["run", "--method", "ga", "--model", "models:/bad uri"], ["model.spec", "models:/NAME@ALIAS"]),
    (["finetune", "--model", "./does/not/exist"], ["model.spec", "does/not/exist"]),
    (["finetune", "--steps", "0"], ["train.steps", "greater than or equal to 1"]),
    (["sweep", "--space", "SPACES/missing.yaml"], ["search space file not found"]),
    (["sweep", "--space", "SPACES/broken.yaml"], ["--space", "broken.yaml: not valid YAML"]),
    (["sweep", "--space", "SPACES/bad_method.yaml"], ["bad_method.yaml", "unknown method 'nope'"]),
    (
        ["sweep", "--space", "SPACES/bad_range.yaml"],
        ["bad_range.yaml", "space.train.lr", "bound -1.0 invalid"],
    ),
    (["sweep", "--space", "SPACES/bad_param.yaml"], ["bad_param.yaml", "method.params.beta"]),
    (["sweep", "--space", "SPACES/bad_key.yaml"], ["bad_key.yaml", "train.nope"]),
    (["sweep"], ["needs --space FILE"]),
    (["sweep", "--resume", "WD/records"], ["--resume", "not a sweep folder"]),
    (["sweep", "--space", "tune_spaces/pubg.yaml", "--num-samples", "0"], ["--num-samples", ">= 1"]),
    (["sweep", "--space", "tune_spaces/pubg.yaml", "--max-failures", "-2"], ["--max-failures", ">= -1"]),
    (
        [
            "sweep",
            "--space",
            "tune_spaces/pubg.yaml",
            "--workers-per-trial",
            "2",
            "--set",
            "train.launcher=in_process",
        ],
        ["train.launcher=in_process", "--workers-per-trial 2", "ray_train"],
    ),
    (
        ["run", "--method", "ga", "--set", "train.launcher=in_process", "--workers", "2"],
        ["launcher=in_process", "num_workers=2"],
    ),
    (["demo", "--methods", "ga,nope"], ["--methods", "unknown method(s) ['nope']"]),
    (["demo", "--method-steps", "0"], ["--method-steps", ">= 1"]),
    (
        ["data", "shard", "--records", "WD/shards", "--model", "tiny-llava", "--out", "WD/s2"],
        ["--records", "not a records folder"],
    ),
    (["data", "shard", "--records", "WD/records", "--model", "WD/nothing", "--out", "WD/s2"], ["--model"]),
    (["data", "validate", "WD/nothing"], ["DIR", "does not exist"]),
    (["data", "convert", "--format", "nope", "--source", "WD", "--out", "WD/r2"], ["unknown format 'nope'"]),
    (["eval", "--model", "WD/nothing", "--shards", "WD/shards", "--out", "WD/e.json"], ["--model"]),
    (
        ["eval", "--model", "WD/models/vanilla", "--shards", "WD/records", "--out", "WD/e.json"],
        ["--shards", "not a shards folder"],
    ),
    (
        ["mask", "--model", "WD/models/vanilla", "--shards", "WD/shards", "--out", "WD/m.bin"],
        [".safetensors"],
    ),
    (["pull", "models:/x", "--out", "WD/p"], ["URI", "models:/NAME@ALIAS"]),
]


def _argv(argv: list[str], wd: Path, spaces: Path) -> list[str]:
    out = [a.replace("WD", str(wd)).replace("SPACES", str(spaces)) for a in argv]
    if out[0] in ("run", "finetune", "sweep", "demo") and "--workdir" not in out:
        out += ["--workdir", str(wd)]
    return out


@pytest.mark.parametrize(("argv", "fragments"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_refused_before_any_work(argv, fragments, workdir, spaces, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if argv[0] in ("eval", "mask"):
        _vanilla(workdir)
        (workdir / "badmodel").mkdir()
        (workdir / "badmodel" / "config.json").write_text('{"architectures": []}')
    before = _tree(workdir)
    rc = main(_argv(argv, workdir, spaces))
    err = capsys.readouterr().err
    assert rc != 0
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert _tree(workdir) == before


def test_unknown_method_in_a_new_workdir_creates_nothing(tmp_path, capsys):
    new = tmp_path / "NEW"
    rc = main(["run", "--method", "no_such_method", "--workdir", str(new)])
    assert rc == 2
    assert "unknown method 'no_such_method'" in capsys.readouterr().err
    assert not new.exists()


def test_run_without_a_vanilla_model_names_the_fix(workdir, capsys):
    before = _tree(workdir)
    assert main(["run", "--method", "ga", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert "models/vanilla does not exist" in err and "unlearn finetune --workdir" in err
    assert _tree(workdir) == before


def test_bad_cli_argument_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--steps", "many"])
    assert exc.value.code == 2
    assert "--steps: invalid int value: 'many'" in capsys.readouterr().err


def test_a_valid_space_passes_preflight(workdir):
    """The checked-in spaces are accepted (the checks do not refuse good input)."""
    from pipelines import preflight
    from unlearn_core.config import RunConfig

    _vanilla(workdir)
    cfg = RunConfig(workdir=str(workdir))
    for space in sorted((ROOT / "tune_spaces").glob("*.yaml")):
        preflight.sweep(
            cfg,
            str(space),
            resume=None,
            scheduler="none",
            search="optuna",
            num_samples=None,
            max_concurrent=None,
            workers_per_trial=1,
        )


def test_refusals_never_start_ray(tmp_path):
    """In a fresh interpreter (no test session's Ray): the bad method, --set and space are refused
    with Ray never initialised and no workdir created."""
    space = tmp_path / "bad.yaml"
    space.write_text("method: ga\nspace:\n  train.lr: {uniform: [-1.0, 1.0e-3]}\n")
    new = tmp_path / "NEW"
    script = textwrap.dedent(f"""
        import json, ray
        from pipelines.cli import main
        rcs = [main(["run", "--method", "no_such_method", "--workdir", {str(new)!r}]),
               main(["run", "--method", "ga", "--set", "train.lr=-1", "--workdir", {str(new)!r}]),
               main(["sweep", "--space", {str(space)!r}, "--workdir", {str(new)!r}])]
        print(json.dumps({{"rcs": rcs, "ray": ray.is_initialized()}}))
    """)
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rcs": [2, 2, 2], "ray": False}, out.stderr
    assert not new.exists()
    assert "unknown method 'no_such_method'" in out.stderr and "train.lr" in out.stderr


def test_methods_and_their_params_are_checked_without_loading_torch(tmp_path):
    """An unknown --method, a bad method param, a sweep space over method params (valid and not) and a
    known method with good params are judged from the registry's names and Params models, so the
    refusal does not wait for torch, transformers and PEFT to import."""
    new = tmp_path / "NEW"
    bad_space = tmp_path / "bad_beta.yaml"
    bad_space.write_text("method: npo\nspace:\n  method.params.beta: {uniform: [-1.0, 0.5]}\n")
    script = textwrap.dedent(f"""
        import json, sys
        from pipelines import preflight
        from pipelines.cli import main
        rcs = [
            main(["run", "--method", "No_Such_Method", "--workdir", {str(new)!r}]),
            main(["run", "--method", "npo", "--set", "method.params.beta=-1", "--workdir", {str(new)!r}]),
            main(["sweep", "--space", {str(bad_space)!r}, "--workdir", {str(new)!r}]),
        ]
        preflight.method("NPO", {{"beta": 0.5, "alpha": 0}})
        preflight.method("pubg", {{"w_ga": 0.02, "instruction": "strict"}})
        from pipelines.sweep.tune_config import load_sweep_space
        load_sweep_space({str(ROOT / "tune_spaces" / "pubg.yaml")!r})
        print(json.dumps({{"rcs": rcs, "torch": "torch" in sys.modules}}))
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rcs": [2, 2, 2], "torch": False}, out.stderr
    from unlearn_core.method_registry import METHOD_CLASSES

    assert {"ga", "grad_diff", "kl", "mmunlearner", "npo", "pubg"} <= set(METHOD_CLASSES)
    assert f"unknown method 'no_such_method'; valid: {', '.join(sorted(METHOD_CLASSES))}" in out.stderr
    assert "method.params.beta: Input should be greater than 0 (valid: > 0, <= 10)" in out.stderr
    assert "bad_beta.yaml: space.method.params.beta: bound -1.0 invalid" in out.stderr
    assert not new.exists()


def test_each_registered_method_uses_the_params_model_its_registry_line_names():
    from unlearn_core.method_registry import REGISTRY
    from unlearn_core.methods import METHODS

    assert set(METHODS) == set(REGISTRY)
    for name, (_, params) in REGISTRY.items():
        assert METHODS[name].Params is params, name


def test_dead_ray_address_is_refused_before_the_log_file(tmp_path, capsys, monkeypatch):
    """ray.init would retry a dead RAY_ADDRESS forever; the CLI names it and stops."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    wd = tmp_path / "wd"
    assert main(["demo", "--workdir", str(wd)]) == 2
    err = capsys.readouterr().err
    assert f"RAY_ADDRESS=127.0.0.1:{port}: no Ray cluster answers there" in err and "ray start --head" in err
    assert not wd.exists()


TRAINER_REFUSALS = [
    (
        ["run", "--method", "mmunlearner", "--set", "train.deepspeed_stage=2"],
        ["train.deepspeed_stage=2", "method.name='mmunlearner'", "train.deepspeed_stage=0"],
    ),
    (
        ["run", "--method", "pubg", "--set", "method.params.mask=vision", "--set", "train.grad_accum=2"],
        ["train.grad_accum=2", "method.name='pubg'", "method.params.mask=none"],
    ),
    (
        ["sweep", "--space", "tune_spaces/pubg.yaml", "--set", "train.deepspeed_stage=3"],
        ["tune_spaces/pubg.yaml", "a trial with method.params.mask=both", "train.deepspeed_stage=3"],
    ),
    (
        ["sweep", "--space", "tune_spaces/mmunlearner.yaml", "--set", "train.grad_accum=4"],
        ["tune_spaces/mmunlearner.yaml", "train.grad_accum=4", "cannot accumulate"],
    ),
]


@pytest.mark.parametrize(
    ("argv", "fragments"), TRAINER_REFUSALS, ids=[" ".join(c[0])[:60] for c in TRAINER_REFUSALS]
)
def test_trainer_refusals_come_from_preflight(argv, fragments, workdir, capsys, monkeypatch):
    """A custom-step method under DeepSpeed or grad_accum is refused before Ray starts, the mask is
    computed or an MLflow run opens: the workdir (with its vanilla model) is left as it was, and no
    torch was needed for the check."""
    import pipelines.ray_env

    def no_work(*_args, **_kwargs):
        raise AssertionError("the command got past preflight and started Ray")

    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(pipelines.ray_env, "ensure_ray", no_work)
    _vanilla(workdir)
    before = _tree(workdir)
    rc = main(_argv(argv, workdir, workdir))
    err = capsys.readouterr().err
    assert rc == 2, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    assert _tree(workdir) == before


def test_the_trainer_check_needs_no_torch():
    code = (
        "import sys\n"
        "from unlearn_core.config import RunConfig, with_overrides\n"
        "from unlearn_core.method_registry import check_supported\n"
        "cfg = with_overrides(RunConfig(), {'method.name': 'pubg', 'method.params': {'mask': 'both'}})\n"
        "check_supported(cfg)\n"
        "try:\n"
        "    check_supported(with_overrides(cfg, {'train.deepspeed_stage': 2}))\n"
        "except Exception as err:\n"
        "    print(type(err).__name__)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["ConfigError", "False"]
