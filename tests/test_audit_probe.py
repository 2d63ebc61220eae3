"""The in-training audit probe (unlearn_core/audit/probe.py): its rows, its figures against numbers
computed here, the gaps it reports, and its way into a training job's evaluations and a sweep's
objective."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.audit_fixtures import one_thread, tiny_benchmark, trained_pair
from unlearn_core.audit import membership
from unlearn_core.audit.probe import ProbeSettings, probe_figures, probe_metrics, probe_rows, run_probe
from unlearn_core.audit.rows import image_key
from unlearn_core.eval.metrics import higher_is_better
from unlearn_core.search_space import objective_value, parse_space


@pytest.fixture(scope="module")
def bench():
    return tiny_benchmark()


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def test_probe_metrics_are_the_gaps_to_the_reference():
    m = probe_metrics({"relearn_leak": 0.31, "auc": 0.33}, {"relearn_leak": 0.06, "auc": 0.52})
    assert m["audit_probe.relearn_excess"] == pytest.approx(0.25)
    assert m["audit_probe.auc_gap"] == pytest.approx(0.19)  # two-sided: below the reference counts
    assert m["audit_probe.relearn_leak_ref"] == 0.06 and m["audit_probe.auc_ref"] == 0.52
    low = probe_metrics({"relearn_leak": 0.0, "auc": 0.60}, {"relearn_leak": 0.06, "auc": 0.52})
    assert low["audit_probe.relearn_excess"] == 0.0 and low["audit_probe.auc_gap"] == pytest.approx(0.08)
    for name in ("audit_probe.relearn_excess", "audit_probe.auc_gap", "audit_probe.relearn_leak"):
        assert not higher_is_better(name)
    # every attack and level: the worst gap decides, and each level reports its own worst
    fig = {"relearn_leak": 0.0, "auc": 0.50, "auc_image_loss": 0.50, "auc_image_min_k_plus_plus": 0.40,
           "auc_person_loss": 0.30, "auc_person_min_k_plus_plus": 0.05}  # fmt: skip
    ref = {"relearn_leak": 0.0, "auc": 0.48, "auc_image_loss": 0.48, "auc_image_min_k_plus_plus": 0.49,
           "auc_person_loss": 0.50, "auc_person_min_k_plus_plus": 0.55}  # fmt: skip
    m = probe_metrics(fig, ref)
    assert m["audit_probe.auc_gap"] == pytest.approx(0.50)  # person-level Min-K%++, 0.05 vs 0.55
    assert m["audit_probe.auc_gap_person"] == pytest.approx(0.50)
    assert m["audit_probe.auc_gap_image"] == pytest.approx(0.09)
    assert not higher_is_better("audit_probe.auc_gap_person") and not higher_is_better(
        "audit_probe.auc_gap_image"
    )


def test_probe_rows_keep_the_audits_split_and_are_seeded(bench):
    s = ProbeSettings(max_leak_rows=5, max_member_rows=4)
    rows = probe_rows(bench["rows"], s)
    assert rows["train"] and len(rows["leak"]) == 5 and len(rows["member"]) == len(rows["unseen"]) == 4
    assert not {image_key(r) for r in rows["train"]} & {image_key(r) for r in rows["leak"]}
    assert {r["split"] for r in rows["member"]} == {"forget"}
    assert {r["split"] for r in rows["unseen"]} == {"forget_unseen"}
    assert len(rows["holdout"]) == 4 and {r["split"] for r in rows["holdout"]} == {"holdout"}
    assert not probe_rows(bench["rows"], ProbeSettings(person_level=False))["holdout"]
    again = probe_rows(bench["rows"], s)
    assert [r["sample_id"] for r in again["leak"]] == [r["sample_id"] for r in rows["leak"]]


def test_probe_figures_by_hand_and_the_model_untouched(bench):
    model, processor = bench["model"], bench["processor"]
    s = ProbeSettings(steps=1, batch=2, max_leak_rows=3, max_member_rows=3)
    rows = probe_rows(bench["rows"], s)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fig = probe_figures(model, processor, rows, s)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # the AUC: LOSS (mean answer-token NLL) of member vs unseen rows, the pairwise probability
    stats = membership.token_stats(model, processor, [*rows["member"], *rows["unseen"]])
    loss = [-float(st.logp.mean()) for st in stats]
    pairs = [(u > f) + 0.5 * (u == f) for f in loss[:3] for u in loss[3:]]
    assert fig["auc"] == pytest.approx(sum(pairs) / len(pairs))

    # person level, Min-K%++ by hand: per token z = (log p - mu) / sigma over the answer (EOS left out),
    # the row's score minus the mean of its lowest 40%; AUC of forget rows vs holdout rows
    def min_k_pp(st):
        z = sorted(((st.logp - st.mu) / st.var**0.5)[:-1].tolist())
        n = max(1, int(len(z) * 0.4))
        return -sum(z[:n]) / n

    holdout = membership.token_stats(model, processor, rows["holdout"])
    member = [min_k_pp(st) for st in stats[:3]]
    other = [min_k_pp(st) for st in holdout]
    pairs = [(o > f) + 0.5 * (o == f) for f in member for o in other]
    assert fig["auc_person_min_k_plus_plus"] == pytest.approx(sum(pairs) / len(pairs))
    assert {f"auc_{lv}_{a}" for lv in ("image", "person") for a in ("loss", "zlib", "min_k")} <= set(fig)
    assert 0.0 <= fig["relearn_leak"] <= 1.0
    metrics = run_probe(model, processor, {"rows": rows, "settings": s.as_dict(), "reference": fig})
    assert (
        metrics["audit_probe.auc_gap"] == pytest.approx(0.0) and metrics["audit_probe.relearn_excess"] == 0.0
    )


@pytest.mark.slow
def test_probe_tells_a_model_that_saw_the_forget_rows_from_one_that_did_not():
    pair = trained_pair()
    s = ProbeSettings(steps=2, batch=4)
    rows = probe_rows(pair["rows"], s)
    knows = probe_figures(pair["knows"], pair["processor"], rows, s)
    never = probe_figures(pair["never"], pair["processor"], rows, s)
    # relearning: two steps on T bring the forget people back only for the model that knew them
    assert knows["relearn_leak"] >= 0.25 and never["relearn_leak"] == 0.0
    metrics = probe_metrics(knows, never)
    assert metrics["audit_probe.relearn_excess"] == pytest.approx(knows["relearn_leak"])
    # image-level membership (training vs unseen images of the same people) separates only weakly on
    # this tiny bench (0.66 vs 0.62): the one that saw the images ranks them higher, by a small gap
    assert knows["auc"] > never["auc"]
    gaps = [abs(v - never[k]) for k, v in knows.items() if k.startswith("auc")]
    # person level (forget vs holdout people) separates clearly: 0.81 vs 0.54 under LOSS when written
    assert knows["auc_person_loss"] >= 0.7 and abs(never["auc_person_loss"] - 0.5) <= 0.1
    assert metrics["audit_probe.auc_gap_person"] >= 0.2
    assert metrics["audit_probe.auc_gap"] == pytest.approx(max(gaps))


def test_final_evaluation_writes_and_returns_the_extra_metrics(bench, tmp_path):
    from pipelines.train.trainer import FINAL_OUTPUTS, final_evaluation
    from unlearn_core.training.loop import WorkerContext

    rows = [r for r in bench["rows"] if r["split"] == "forget" and r["task"] == "identity_vqa"][:2]
    metrics = final_evaluation(
        bench["model"], bench["processor"], rows, "synthetic", WorkerContext(), tmp_path,
        extra=lambda: {"audit_probe.auc_gap": 0.125},
    )  # fmt: skip
    assert metrics["audit_probe.auc_gap"] == 0.125 and "forget.leak_rate" in metrics
    written = json.loads((tmp_path / FINAL_OUTPUTS).read_text())
    assert written["extra_metrics"] == {"audit_probe.auc_gap": 0.125} and len(written["outputs"]) == 2


def test_a_training_job_hands_the_probe_to_its_workers(tmp_path):
    from pipelines.audit.probe import wants_probe
    from pipelines.train.driver import TrainingJob
    from unlearn_core.config import RunConfig

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"config": {"image_size": 32}, "fingerprint": "x"}))
    payload = {"rows": {}, "settings": {}, "reference": {"relearn_leak": 0.0, "auc": 0.5}}
    job = TrainingJob(
        cfg=RunConfig(), mode="unlearn", shards=shards, init_model="m", processor_dir="p", datasets={},
        out_dir=tmp_path / "out", eval_path=tmp_path / "e.json", name="n", storage_path=str(tmp_path),
        audit_probe=payload,
    )  # fmt: skip
    assert job.worker_spec(shard_rows=[]).audit_probe == payload
    assert wants_probe({"forget.leak_rate": 1.0, "audit_probe.auc_gap": 1.0})
    assert wants_probe({}, "audit_probe.relearn_excess") and not wants_probe({"forget.leak_rate": 1.0})


def test_objective_weighs_probe_figures_and_checks_their_direction():
    space = parse_space(
        {
            "method": "npo",
            "space": {"train.lr": {"loguniform": [1e-4, 1e-3]}},
            "objective": {
                "metric": "score",
                "mode": "min",
                "terms": {
                    "forget.leak_rate": 1.0,
                    "audit_probe.relearn_excess": 2.0,
                    "audit_probe.auc_gap": 1.0,
                },
            },
        }
    )
    value = objective_value(
        space.objective,
        {"forget.leak_rate": 0.0, "audit_probe.relearn_excess": 0.25, "audit_probe.auc_gap": 0.1},
    )
    assert value == pytest.approx(0.6)
    from unlearn_core.config import ConfigError

    with pytest.raises(ConfigError, match="lower is better for 'audit_probe.auc_gap'"):
        parse_space(
            {
                "method": "npo",
                "space": {"train.lr": {"loguniform": [1e-4, 1e-3]}},
                "objective": {"metric": "score", "mode": "min", "terms": {"audit_probe.auc_gap": -1.0}},
            }
        )


def test_shipped_spaces_sample_the_robust_options():
    """PUBG's robust search (pubg_robust.yaml; pubg.yaml stays the measured plain region) and NPO's."""
    from unlearn_core.search_space import load_space

    root = Path(__file__).resolve().parents[1] / "tune_spaces"
    for name in ("pubg_robust", "npo"):
        space = load_space(root / f"{name}.yaml")
        robust = {k for k in space.dims if k.split(".")[-1] in ("sam_rho", "rs_sigma", "tar_steps")}
        assert robust, f"tune_spaces/{name}.yaml samples no robustness option"
        assert any(0 in space.dims[k].args or 0.0 in space.dims[k].args for k in robust)  # off stays possible


def test_the_demo_says_which_target_and_check_its_champion_misses_and_by_how_much(tmp_path):
    from pipelines.demo import champion_verdict, missed_targets
    from pipelines.sweep.driver import SweepResult
    from pipelines.sweep.report import ChampionOutcome, TrialOutcome
    from tests.test_audit import _side
    from unlearn_core.audit import compare

    vanilla = {"retain.vqa_acc": 1.0, "guided_forget.informativeness": 0.95}
    good = {"forget.leak_rate": 0.0, "forget_unseen.leak_rate": 0.0, "retain.vqa_acc": 0.97,
            "quality.informativeness": 0.9, "quality.hallucination": 0.08, "quality.refusal_rate": 0.0,
            "quality.degeneracy_rate": 0.0}  # fmt: skip
    assert missed_targets(good, vanilla) == []
    bad = {**good, "quality.hallucination": 0.125, "quality.informativeness": 0.7}
    assert missed_targets(bad, vanilla) == [
        "quality.hallucination 0.125 > 0.1",
        "quality.informativeness 0.700 < 0.76",
    ]
    report = compare(_side(relearn__figures__2__leak=0.31), _side())
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(report))

    def result(metrics, verdict):
        champion = ChampionOutcome(trial="t1", reason="", qualifying=["t1"], audits={"t1": verdict})
        trials = {"t1": TrialOutcome("completed", metrics, {})}
        return SweepResult(tmp_path, "s", "p", {}, trials, [], [], champion)

    lines = champion_verdict(result(bad, {"pass": False, "failed": ["relearn"], "json": str(path)}), vanilla)
    assert "output targets MISSED: quality.hallucination 0.125 > 0.1" in lines[1]
    assert any("relearning: FAIL: max leak gap +0.31" in ln for ln in lines)
    assert lines[-1].startswith("champion t1 FAILS: output targets, relearn")
    ok = compare(_side(), _side())
    path.write_text(json.dumps(ok))
    lines = champion_verdict(result(good, {"pass": True, "failed": [], "json": str(path)}), vanilla)
    assert lines[1] == "output targets: all met"
    assert lines[-1] == "champion t1 meets every output target and passes every audit check"
