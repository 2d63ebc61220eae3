"""`unlearn audit` (pipelines/audit) and `unlearn sweep --audit`: refusals before any work, the MLflow run
and its links, the cached reference, the audited champion, and the verdict `unlearn pull` prints."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from audit_fixtures import AUDIT_SYNTH
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.provenance import PROVENANCE_FILE, write_provenance
from unlearn_core.config import ModelConfig, SynthConfig

REPO = Path(__file__).resolve().parent.parent


def _processor(records: Path, out: Path) -> Path:
    from pipelines.shards.build import build_processor
    from unlearn_core.data.records_io import read_records

    build_processor("tiny-llava", read_records(records), out, ModelConfig(spec="tiny-llava"), 32)
    return out


def _records(out: Path, cfg: SynthConfig = AUDIT_SYNTH) -> Path:
    from unlearn_core.data.records_io import write_records
    from unlearn_core.data.synth import generate_benchmark

    write_records(generate_benchmark(cfg), out, source="synthetic")
    return out


def _model(processor_dir: Path, out: Path) -> Path:
    from transformers import AutoProcessor

    from unlearn_core.models.loading import save_model
    from unlearn_core.models.tiny import build_tiny_llava

    processor = AutoProcessor.from_pretrained(processor_dir)
    model, _ = build_tiny_llava(processor.tokenizer, image_size=32, seed=0)
    return save_model(model, processor, out)


@pytest.fixture(scope="module")
def workdir_without_shards(tmp_path_factory) -> dict[str, Path]:
    """A workdir whose shards folder holds the manifest and processor (what the refusals read) and
    models: one of this workdir, one with another benchmark's tokenizer, one without provenance."""
    root = tmp_path_factory.mktemp("audit-refusals")
    wd = root / "wd"
    proc = _processor(_records(root / "records"), wd / "shards" / "processor")
    (wd / "shards" / "manifest.json").write_text(json.dumps({"fingerprint": "f" * 64}))
    mine = _model(proc, root / "mine")
    write_provenance(mine, shards_fingerprint="f" * 64, mode="unlearn", run_id="x")
    other_proc = _processor(
        _records(root / "other", AUDIT_SYNTH.model_copy(update={"seed": 9})), root / "other_proc"
    )
    other = _model(other_proc, root / "other_model")
    write_provenance(other, shards_fingerprint="f" * 64, mode="unlearn", run_id="x")
    bare = root / "bare"
    shutil.copytree(mine, bare)
    (bare / PROVENANCE_FILE).unlink()
    moved = root / "moved"
    shutil.copytree(mine, moved)
    write_provenance(moved, shards_fingerprint="e" * 64, mode="unlearn", run_id="x")
    return {"wd": wd, "mine": mine, "other": other, "bare": bare, "moved": moved}


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("other", "its tokenizer differs from the workdir's"),
        ("bare", "no lvlm_unlearn.json"),
        ("moved", "trained on other data (shards eeeeeeee"),
    ],
)
def test_audit_refuses_a_model_of_other_data_before_any_work(workdir_without_shards, capsys, model, message):
    paths = workdir_without_shards
    code = main(["audit", "--model", str(paths[model]), "--workdir", str(paths["wd"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --model") and message in err[0]
    # Nothing was started or written: no MLflow store, no reference, no report, no log folder.
    assert sorted(p.name for p in paths["wd"].iterdir()) == ["shards"]


def test_audit_refuses_unknown_checks_and_a_workdir_without_shards(workdir_without_shards, capsys, tmp_path):
    paths = workdir_without_shards
    assert (
        main(
            ["audit", "--model", str(paths["mine"]), "--workdir", str(paths["wd"]), "--checks", "relearn,mia"]
        )
        == 2
    )
    assert "unknown check(s) ['mia']" in capsys.readouterr().err
    assert main(["audit", "--model", str(paths["mine"]), "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --workdir (its shards): shards folder") and "does not exist" in err


def test_a_matching_model_passes_the_check(workdir_without_shards):
    from pipelines.audit.match import check_model_matches

    paths = workdir_without_shards
    check_model_matches(paths["mine"], paths["wd"] / "shards")
    check_model_matches(paths["bare"], paths["wd"] / "shards", check_data=False)  # --skip-data-check


# ------------------------------------------------------------------------------- sweep --audit


def _report(passed: bool, failed: list[str], run_id: str = "") -> dict[str, Any]:
    return {
        "pass": passed,
        "failed": failed,
        "run_id": run_id,
        "reference": {"dir": "/w/models/reference-rows-abc"},
    }


def _trials(tmp_path: Path, uri: str, exp: str) -> dict[str, Any]:
    from pipelines.sweep.report import TrialOutcome

    proc = _processor(_records(tmp_path / "records"), tmp_path / "proc")
    client = MlflowClient(uri)
    trials = {}
    # informativeness ranks t1 > t2 > t3 (all qualify); t4 leaks but has the best objective
    for i, (leak, info, objective) in enumerate(
        [(0, 0.9, 0.5), (0, 0.8, 0.4), (0, 0.7, 0.3), (0.5, 1.0, -9.0)], 1
    ):
        run = client.create_run(exp, run_name=f"t{i}")
        metrics = {"forget.leak_rate": leak, "forget_unseen.leak_rate": 0.0, "retain.vqa_acc": 1.0,
                   "quality.informativeness": info, "objective": objective}  # fmt: skip
        model = _model(proc, tmp_path / f"model{i}")
        trials[f"t{i}"] = TrialOutcome("completed", metrics, {}, model_dir=str(model), run_id=run.info.run_id)
    return trials


@pytest.mark.parametrize(
    ("verdicts", "fallback", "champion", "order"),
    [
        # the first qualifying trial (in informativeness order) that passes
        ({"t1": False, "t2": True, "t3": True}, "objective", "t2", ["t1", "t2"]),
        # none passes: the best objective (t4, which did not qualify), audited for its tags
        ({"t1": False, "t2": False, "t3": False, "t4": False}, "objective", "t4", ["t1", "t2", "t3", "t4"]),
        ({"t1": False, "t2": False, "t3": False}, "none", None, ["t1", "t2", "t3"]),  # fallback none
    ],
)
def test_sweep_audit_registers_the_first_qualifying_trial_that_passes(
    tmp_path, mlflow_store, capsys, verdicts, fallback, champion, order
):
    from pipelines.sweep.champion import ChampionRule
    from pipelines.sweep.report import pick_champion
    from pipelines.sweep.tune_config import load_sweep_space
    from unlearn_core.config import RunConfig

    uri = mlflow_store["tracking_uri"]
    client = MlflowClient(uri)
    exp = client.create_experiment("audit-sweep", artifact_location=str(mlflow_store["artifacts"]))
    parent = client.create_run(exp, run_name="sweep").info.run_id
    trials = _trials(tmp_path, uri, exp)
    space, objectives = load_sweep_space(REPO / "tune_spaces" / "ga.yaml")
    cfg = RunConfig.model_validate(
        {"workdir": str(tmp_path), "tracking": {"registered_model_name": "audited"}}
    )
    audited: list[str] = []
    by_dir = {t.model_dir: name for name, t in trials.items()}

    def auditor(model_dir: str) -> dict[str, Any]:
        name = by_dir[model_dir]
        audited.append(name)
        ok = verdicts[name]
        return _report(ok, [] if ok else ["relearn"], run_id=f"audit-{name}")

    lines: list[str] = []
    out = pick_champion(space, objectives, cfg, trials, {"retain.vqa_acc": 1.0}, ChampionRule(fallback=fallback),
                        uri, parent, lines.append, auditor=auditor)  # fmt: skip
    assert out.trial == champion and set(out.audits) == set(audited)
    assert audited == order
    if champion is None:
        assert any("no qualifying trial passes the audit" in ln for ln in lines)
        assert not client.search_registered_models()
        return
    version = client.get_model_version_by_alias("audited", "champion")
    tags = version.tags
    assert version.run_id == trials[champion].run_id
    assert tags["audit_verdict"] == ("pass" if verdicts[champion] else "fail")
    assert tags["audit_run_id"] == f"audit-{champion}" and tags["audit_reference"] == "reference-rows-abc"
    assert client.get_run(parent).data.tags["audit_verdict"] == tags["audit_verdict"]
    # `unlearn pull` prints it.
    assert (
        main(
            [
                "pull",
                "models:/audited@champion",
                "--out",
                str(tmp_path / "pulled"),
                "--workdir",
                str(tmp_path),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    expected = (
        "audit:    PASS against reference-rows-abc"
        if verdicts[champion]
        else "audit:    FAIL (failed: relearn)"
    )
    assert expected in printed


# --------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_unlearn_audit_end_to_end_trains_and_caches_the_reference_and_links_the_runs(tmp_path):
    """`unlearn finetune` (the audited model, registered), `unlearn audit models:/...` (pulls it, trains the
    reference without the forget rows, attacks both, logs the run), a second audit (reference and its
    side cached) and `unlearn pull` printing the verdict, each as a user types it."""
    import os
    import subprocess
    import sys

    from tests.ray_head import short_temp_dir

    wd = tmp_path / "wd"
    _records(wd / "records")
    small = ["--set", "synth.image_size=32", "--set", "train.batch_size=8", "--set", "train.eval_max_samples=4",
             "--set", "train.warmup_steps=0", "--set", "train.steps=12"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{wd / 'mlflow.db'}"
    env.setdefault("RAY_TMPDIR", str(short_temp_dir("au")))
    unlearn = Path(sys.executable).parent / "unlearn"

    def run(*argv: str) -> str:
        out = subprocess.run([str(unlearn), *argv, "--workdir", str(wd)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=1500)  # fmt: skip
        assert out.returncode == 0, f"{argv}: {out.stdout}\n{out.stderr}"
        return out.stdout

    run("finetune", "--name", "m1", *small, "--set", "tracking.registered_model_name=audited")
    checks = ["--checks", "membership,quantization"]
    first = run("audit", "--model", "models:/audited/1", *checks, *small)
    assert "training the retrained reference (the vanilla recipe without the forget rows)" in first
    assert "attacking the retrained reference" in first
    assert "MIA person loss AUC" in first and "MIA image loss AUC" in first and "rtn4: leak_seen" in first
    assert re.search(r"^VERDICT: (PASS|FAIL \(.*\))$", first, re.M)
    refs = list((wd / "models").glob("reference-rows-*"))
    assert len(refs) == 1 and (refs[0] / "lvlm_unlearn.json").is_file()

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("lvlm-unlearn").experiment_id
    audits = client.search_runs([exp], "tags.job = 'audit'")
    finetunes = {
        r.data.tags.get("exclude_forget"): r for r in client.search_runs([exp], "tags.job = 'finetune'")
    }
    assert len(audits) == 1 and set(finetunes) == {None, "rows"}  # the audited model's and the reference's
    audit_run, trained = audits[0], finetunes[None]
    assert audit_run.info.status == "FINISHED"
    assert audit_run.data.tags["audited_run_id"] == trained.info.run_id
    assert audit_run.data.tags["audit_verdict"] in ("pass", "fail")
    assert "audit.membership.person.loss.auc" in audit_run.data.metrics
    assert "audit.quantization.rtn4.leak_seen.rise" in audit_run.data.metrics
    assert {a.path for a in client.list_artifacts(audit_run.info.run_id)} >= {
        f"audit-audited_1-{trained.data.tags['weights_sha256'][:12]}.json",
        f"audit-audited_1-{trained.data.tags['weights_sha256'][:12]}.md",
    }
    verdict = audit_run.data.tags["audit_verdict"]
    assert client.get_run(trained.info.run_id).data.tags["audit_verdict"] == verdict
    assert client.get_model_version("audited", "1").tags["audit_verdict"] == verdict
    report = json.loads(next((wd / "audit").glob("audit-audited_1-*.json")).read_text())
    assert report["run_id"] == audit_run.info.run_id and report["reference"]["excludes"] == "rows"
    assert report["data"]["rows"]["holdout"] > 0 and report["pass"] == (verdict == "pass")

    second = run("audit", "--model", str(wd / "models" / "m1"), *checks, *small)
    assert (
        "[cached] retrained reference" in second and "[cached] the reference's side of the attacks" in second
    )
    assert "training the retrained reference" not in second
    assert len(list((wd / "models").glob("reference-rows-*"))) == 1

    pulled = run("pull", "models:/audited/1", "--out", str(tmp_path / "pulled"))
    assert f"audit:    {verdict.upper()}" in pulled and refs[0].name in pulled
