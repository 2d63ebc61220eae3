"""Ray Tune sweeps (Train V2 driver-function trials) + MLflow parent/child runs + registry champion.

One real sweep on a real local Ray and a real SQLite MLflow store (2 tiny trials, ASHA on intermediate
evaluations every 2 steps), resumed once; the champion rule, the Pareto helpers, the Tune config
(Optuna multi-objective) and concurrent metric logging are tested on their own, cheaply.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking
from pipelines.evaluate.plots import pareto_front, plot_forget_utility, write_results_table
from pipelines.sweep import run_sweep
from pipelines.sweep.champion import ChampionRule, select_champion
from pipelines.sweep.resources import default_max_concurrent, driver_resources
from pipelines.sweep.state import sweep_name_for
from pipelines.sweep.tune_config import Objectives, build_tune_config, load_sweep_space
from tests.pipeline_fixtures import TINY_GA_SPACE, reserved_placement_groups, write_sweep_inputs
from unlearn_core.config import ConfigError, RunConfig, with_overrides
from unlearn_core.eval.runner import EVAL_VERSION

SPACE = TINY_GA_SPACE
MULTI = SPACE.replace(
    """  metric: score
  mode: min
  terms: {forget.leak_rate: 1.0, retain.vqa_acc: -1.0, quality.informativeness: -0.5}""",
    """  metric: [forget.leak_rate, quality.informativeness, retain.vqa_acc]
  mode: [min, max, max]""",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _space(tmp_path: Path, text: str = SPACE, name: str = "ga_tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- the real sweep


@pytest.fixture(scope="module")
def sweep_inputs(tmp_path_factory, ray_local) -> dict[str, Path]:
    return write_sweep_inputs(tmp_path_factory.mktemp("sweep"))


def _children(client: MlflowClient, exp_id: str, parent: str) -> list[Any]:
    return client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


def _sweep_cfg(sweep_inputs: dict[str, Path], uri: str, registered_name: str) -> RunConfig:
    """The tiny sweep's run config: the module's shards, 1 worker at 0.5 CPU, batch 8, this MLflow."""
    return with_overrides(
        RunConfig(),
        {
            "workdir": str(sweep_inputs["workdir"]),
            "shards": str(sweep_inputs["shards"]),
            "train.batch_size": 8,
            "train.cpus_per_worker": 0.5,
            "tracking.tracking_uri": uri,
            "tracking.registered_model_name": registered_name,
        },
    )


@pytest.mark.slow
def test_sweep_runs_trials_logs_children_registers_champion_and_resumes(sweep_inputs, tmp_path, mlflow_store):
    uri = mlflow_store["tracking_uri"]
    cfg = _sweep_cfg(sweep_inputs, uri, "tiny-sweep")
    space = _space(
        tmp_path, SPACE.replace("objective:", "start:\n  - {train.lr: 1.0e-3, train.steps: 4}\nobjective:")
    )
    # Lenient thresholds so the qualifying path (not the fallback) picks the champion of 4-step trials.
    rule = ChampionRule(max_leak=1.0, min_retain_ratio=0.0, max_aftermath=(), min_rank_ratio=0.0)
    lines: list[str] = []
    t0 = time.perf_counter()
    out = run_sweep(
        space,
        cfg,
        num_samples=2,
        scheduler="asha",
        search="random",
        workers_per_trial=1,
        champion_rule=rule,
        log=lambda *a: lines.append(" ".join(map(str, a))),
    )
    print(f"sweep of 2 trials: {time.perf_counter() - t0:.1f} s")
    # Every trial's groups (Tune's, and its Train worker group, also of a trial ASHA stopped) are
    # released: nothing is left to starve the next evaluation, in a Ray without the dashboard.
    assert reserved_placement_groups() == {}

    # Deterministic trial names; every trial finished or was stopped by ASHA on an intermediate eval.
    trials = out.trials
    assert sorted(trials) == ["trial_000", "trial_001"]
    assert {t.status for t in trials.values()} <= {"completed", "stopped"}
    completed = [n for n, t in trials.items() if t.status == "completed"]
    assert "trial_000" in completed  # the first trial is never stopped: nothing to compare it with yet
    assert trials["trial_000"].params["train.lr"] == 1e-3 and trials["trial_000"].params["train.steps"] == 4
    assert trials["trial_001"].params["train.lr"] != 1e-3  # the start point first, then sampled

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name(cfg.tracking.experiment).experiment_id
    parent = client.get_run(out.parent_run_id)
    assert parent.data.tags["job"] == "sweep" and parent.info.status == "FINISHED"
    assert parent.data.params["num_samples"] == "2" and parent.data.params["scheduler"] == "asha"
    assert parent.data.params["space"].endswith("ga_tiny.yaml") and parent.data.params["search"] == "random"
    assert "before.retain.vqa_acc" in parent.data.metrics
    # the starting model was evaluated like the trials (the space's base: 4 samples per group)
    assert list((sweep_inputs["workdir"] / "results").glob(f"eval-*-4-v{EVAL_VERSION}.json"))
    assert not list((sweep_inputs["workdir"] / "results").glob("eval-*-64-*.json"))
    arts = {a.path for a in client.list_artifacts(out.parent_run_id)}
    assert {"pareto.png", "sweep_results.csv", "sweep_results.md", "search_space.yaml"} <= arts
    assert Path(out.artifacts[0]).read_bytes()[:8] == PNG_MAGIC
    csv_text = Path(out.sweep_dir, "report", "sweep_results.csv").read_text()
    assert "trial_000" in csv_text and "vanilla" in csv_text

    # Exactly one child run per trial, with its params and curves (each step logged once).
    children = _children(client, exp_id, out.parent_run_id)
    assert sorted(r.data.tags["trial_name"] for r in children) == sorted(trials)
    for run in children:
        t = trials[run.data.tags["trial_name"]]
        assert run.info.run_id == t.run_id
        assert run.data.params["method.name"] == "ga"
        assert float(run.data.params["train.lr"]) == pytest.approx(t.params["train.lr"])
        assert run.data.params["train.num_workers"] == "1"
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), f"{key}: duplicated steps {steps}"
        curve = [int(m.step) for m in client.get_metric_history(run.info.run_id, "eval/objective")]
        if t.status == "completed":
            n_steps = int(t.params["train.steps"])
            assert curve == list(range(2, n_steps + 1, 2))  # every intermediate eval reached MLflow once
            assert run.info.status == "FINISHED" and "forget.leak_rate" in run.data.metrics
            assert [a.path for a in client.list_artifacts(run.info.run_id)]
        else:
            assert run.info.status == "KILLED" and "stopped_early" in run.data.tags
            assert curve and curve[-1] == int(t.step)

    # Champion: registered, aliased, rationale tagged; pulling @champion gives its exact weights.
    champ = out.champion
    assert champ.trial in completed and not champ.fallback
    assert sorted(champ.qualifying) == sorted(completed)
    assert champ.uri == "models:/tiny-sweep@champion"
    version = client.get_model_version_by_alias("tiny-sweep", "champion")
    assert version.run_id == trials[champ.trial].run_id
    assert "qualify:" in version.tags["champion_rationale"]
    assert client.get_run(out.parent_run_id).data.tags["champion_trial"] == champ.trial
    assert "champion_rationale" in client.get_run(out.parent_run_id).data.tags
    pulled = tracking.pull("models:/tiny-sweep@champion", tmp_path / "pulled", tracking_uri=uri)
    assert tracking.weights_sha256(pulled) == tracking.weights_sha256(trials[champ.trial].model_dir)
    assert any("champion: trial_" in line for line in lines)
    assert any(line.startswith("metric") and "vanilla" in line for line in lines)

    # The same sweep again without --resume is refused with the way to continue it.
    with pytest.raises(ConfigError, match="--resume"):
        run_sweep(
            space,
            cfg,
            num_samples=2,
            scheduler="asha",
            search="random",
            champion_rule=rule,
            log=lambda *a: None,
        )

    # Resume a finished sweep: restored from its folder, no trial re-run, same champion version.
    t0 = time.perf_counter()
    again = run_sweep("", cfg, resume_dir=out.sweep_dir, log=lambda *a: None)
    print(f"resume of a finished sweep: {time.perf_counter() - t0:.1f} s")
    assert again.parent_run_id == out.parent_run_id
    assert {n: t.status for n, t in again.trials.items()} == {n: t.status for n, t in trials.items()}
    assert len(_children(client, exp_id, out.parent_run_id)) == len(children)
    assert again.champion.version == champ.version
    assert len(client.search_model_versions("name='tiny-sweep'")) == 1


@pytest.mark.slow
def test_two_identical_trials_running_together_give_identical_weights_and_metrics(
    sweep_inputs, tmp_path, mlflow_store
):
    """Same config, same seed, same numbers: two trials of one configuration, run at the same time
    (competing for the 2 cores, each evaluating while the other trains), end with bit-identical
    weights and identical metrics, the in-training evaluations included."""
    cfg = _sweep_cfg(sweep_inputs, mlflow_store["tracking_uri"], "tiny-twins")
    point = "{train.lr: 2.0e-3, train.steps: 4}"
    space = _space(
        tmp_path,
        SPACE.replace("objective:", f"start:\n  - {point}\n  - {point}\nobjective:"),
        name="twins.yaml",
    )
    out = run_sweep(
        space,
        cfg,
        num_samples=2,
        scheduler="none",
        search="random",
        max_concurrent=2,
        workers_per_trial=1,
        champion_rule=ChampionRule(max_leak=1.0, min_retain_ratio=0.0),
        log=lambda *a: None,
    )
    a, b = out.trials["trial_000"], out.trials["trial_001"]
    assert a.status == b.status == "completed" and a.params == b.params
    assert a.weights_sha256 and a.weights_sha256 == b.weights_sha256
    assert a.metrics and a.metrics == b.metrics
    client = MlflowClient(mlflow_store["tracking_uri"])
    curves = [
        [(m.step, m.value) for m in client.get_metric_history(t.run_id, "eval/objective")] for t in (a, b)
    ]
    assert curves[0] and curves[0] == curves[1]
    assert reserved_placement_groups() == {}


# --------------------------------------------------------------------------- champion rule


VANILLA = {"retain.vqa_acc": 0.8}


def _m(leak: float, unseen: float, retain: float, inf: float, obj: float) -> dict[str, float]:
    return {
        "forget.leak_rate": leak,
        "forget_unseen.leak_rate": unseen,
        "retain.vqa_acc": retain,
        "quality.informativeness": inf,
        "objective": obj,
    }


def test_champion_rule_picks_most_informative_qualifying_trial():
    trials = {
        "a": _m(0.0, 0.0, 0.78, 0.40, 0.1),  # qualifies (0.78 >= 0.95 * 0.8 = 0.76)
        "b": _m(0.0, 0.0, 0.77, 0.60, 0.3),  # qualifies, more informative -> champion
        "c": _m(0.1, 0.0, 0.80, 0.90, -1.0),  # leaks
        "d": _m(0.0, 0.2, 0.80, 0.90, -1.0),  # leaks on unseen images
        "e": _m(0.0, 0.0, 0.70, 0.95, -2.0),  # loses too much retain accuracy
    }
    choice = select_champion(trials, VANILLA)
    assert choice.trial == "b" and choice.qualifying == ["a", "b"] and not choice.fallback_used
    assert choice.metrics["quality.informativeness"] == 0.60
    rationale = choice.rationale(ChampionRule())
    assert '"chosen": "b"' in rationale and '"qualifying": ["a", "b"]' in rationale


def test_champion_rule_holds_every_output_target():
    """Aftermaths (hallucination <= 0.10, refusal <= 0.05, degeneracy <= 0.02) and informativeness >= 0.8 x
    the vanilla's guided informativeness: a trial that misses any one of them does not qualify."""
    vanilla = {"retain.vqa_acc": 0.8, "guided_forget.informativeness": 0.9}  # informativeness bound 0.72
    ok = {**_m(0, 0, 0.8, 0.75, 0.5), "quality.hallucination": 0.10, "quality.refusal_rate": 0.05,
          "quality.degeneracy_rate": 0.02}  # fmt: skip
    trials = {
        "ok": ok,
        "hallucinates": {**ok, "quality.hallucination": 0.11, "quality.informativeness": 0.9},
        "refuses": {**ok, "quality.refusal_rate": 0.06, "quality.informativeness": 0.9},
        "degenerate": {**ok, "quality.degeneracy_rate": 0.03, "quality.informativeness": 0.9},
        "uninformative": {**ok, "quality.informativeness": 0.71},
        "no_aftermath_figures": {k: v for k, v in ok.items() if not k.startswith("quality.h")},
    }
    choice = select_champion(trials, vanilla)
    assert choice.qualifying == ["ok"] and choice.trial == "ok"
    assert any("quality.informativeness bound 0.72" in n for n in choice.notes)
    assert choice.metrics["quality.hallucination"] == 0.10
    # a vanilla without the guided figure skips that bound (said in the notes), and a rule may relax it
    assert "uninformative" in select_champion(trials, {"retain.vqa_acc": 0.8}).qualifying
    relaxed = ChampionRule(max_aftermath=(("quality.hallucination", 0.2),), min_rank_ratio=0.0)
    assert {"hallucinates", "refuses", "degenerate", "uninformative"} <= set(
        select_champion(trials, vanilla, rule=relaxed).qualifying
    )
    assert "quality.refusal_rate <= 0.05" in ChampionRule().describe()
    assert ChampionRule.from_dict(relaxed.to_dict()) == relaxed


def test_champion_tie_goes_to_better_objective():
    trials = {"x": _m(0, 0, 0.8, 0.5, 0.30), "y": _m(0, 0, 0.8, 0.5, 0.10), "z": _m(0, 0, 0.8, 0.4, -5.0)}
    assert select_champion(trials, VANILLA).trial == "y"
    assert select_champion(trials, VANILLA, objective_mode="max").trial == "x"


def test_champion_none_qualifies_fallback_or_nothing():
    trials = {"a": _m(0.2, 0.0, 0.8, 0.5, 0.4), "b": _m(0.1, 0.1, 0.8, 0.5, 0.2)}
    choice = select_champion(trials, VANILLA)
    assert choice.trial == "b" and choice.fallback_used and choice.qualifying == []
    assert "no trial qualifies" in choice.reason
    nothing = select_champion(trials, VANILLA, rule=ChampionRule(fallback="none"))
    assert nothing.trial is None and "nothing registered" in nothing.reason
    assert select_champion({}, VANILLA).trial is None


def test_champion_missing_metrics_and_config():
    # A trial without a metric the rule needs does not qualify; a metric no trial has is skipped.
    trials = {
        "a": {"forget.leak_rate": 0.0, "retain.vqa_acc": 0.8, "objective": 1.0},
        "b": {"forget.leak_rate": 0.0, "objective": 0.0},
    }
    choice = select_champion(trials, VANILLA)
    assert choice.trial == "a" and choice.qualifying == ["a"]
    assert any("forget_unseen.leak_rate" in n for n in choice.notes)
    assert select_champion(trials, {}).qualifying == ["a", "b"]  # no vanilla retain: bound skipped
    rule = ChampionRule.from_dict({"min_retain_ratio": 0.9, "leak_metrics": ["forget.leak_rate"]})
    assert rule.leak_metrics == ("forget.leak_rate",) and rule.min_retain_ratio == 0.9
    assert ChampionRule.from_dict(rule.to_dict()) == rule  # as sweep.json stores and reads it back
    with pytest.raises(ValueError, match="unknown champion rule keys"):
        ChampionRule.from_dict({"min_retain": 0.9})
    with pytest.raises(ValueError, match="fallback"):
        ChampionRule(fallback="best")


# --------------------------------------------------------------------------- plots and tables


def test_pareto_front_and_plot_of_single_runs(tmp_path):
    runs = {
        "pubg": _m(0.0, 0.1, 0.70, 0.6, 0),
        "ga": _m(0.0, 0.0, 0.20, 0.0, 0),
        "npo": _m(0.1, 0.1, 0.60, 0.5, 0),  # dominated by pubg
        "reject": _m(0.3, 0.3, 0.80, 0.1, 0),
    }
    assert pareto_front(runs) == ["pubg", "ga", "reject"]
    png = plot_forget_utility(
        runs, tmp_path / "methods.png", reference={"vanilla": _m(0.9, 0.8, 0.8, 0.7, 0)}
    )
    assert png.read_bytes()[:8] == PNG_MAGIC
    paths = write_results_table(
        [{"run": "ga", "x": 0.5}, {"run": "npo"}], ["run", "x"], tmp_path / "t.csv", tmp_path / "t.md"
    )
    assert paths[0].read_text().splitlines() == ["run,x", "ga,0.5", "npo,"]
    assert "| ga | 0.5 |" in paths[1].read_text()


# --------------------------------------------------------------------------- Tune config and options


def test_sweep_options_and_resources(tmp_path, monkeypatch):
    space, obj = load_sweep_space(_space(tmp_path))
    assert obj == Objectives(("objective",), ("min",))
    multi, mobj = load_sweep_space(_space(tmp_path, MULTI, "multi.yaml"))
    assert mobj.multi and mobj.modes == ("min", "max", "max")
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="ASHA"):
        build_tune_config(
            mobj, multi, cfg, num_samples=2, scheduler="asha", search="optuna", max_concurrent=1
        )
    with pytest.raises(ConfigError, match="optuna"):
        build_tune_config(
            mobj, multi, cfg, num_samples=2, scheduler="none", search="random", max_concurrent=1
        )
    bad = _space(tmp_path, MULTI.replace("mode: [min, max, max]", "mode: [max, max, max]"), "bad.yaml")
    with pytest.raises(ConfigError, match="forget.leak_rate"):
        load_sweep_space(bad)
    no_eval, no_eval_obj = load_sweep_space(
        _space(tmp_path, SPACE.replace("train.eval_every: 2", "train.eval_every: 0"), "noeval.yaml")
    )
    with pytest.raises(ConfigError, match="eval_every"):
        build_tune_config(
            no_eval_obj, no_eval, cfg, num_samples=2, scheduler="asha", search="random", max_concurrent=1
        )
    # Names are stable in the space file, the config and the options.
    opts = {"num_samples": 2, "scheduler": "asha"}
    path = _space(tmp_path)
    assert sweep_name_for(path, cfg, opts) == sweep_name_for(path, cfg, dict(opts))
    assert sweep_name_for(path, cfg, opts) != sweep_name_for(path, cfg, {**opts, "num_samples": 3})
    assert sweep_name_for(path, cfg, opts).startswith("sweep-ga_tiny-")

    # Resources: 1 CPU per driver on a big node, none (a token of memory) on a 2-CPU machine.
    monkeypatch.delenv("UNLEARN_TUNE_DRIVER_CPUS", raising=False)
    monkeypatch.delenv("UNLEARN_TUNE_DRIVER_RESOURCE", raising=False)
    big = {"CPU": 16.0, "GPU": 4.0, "tune_driver": 8.0}
    drv = driver_resources(cfg, 2, big)
    assert drv == {"CPU": 1.0}
    assert default_max_concurrent(cfg, 2, drv, big) == 4  # (16 - 2 for Ray Data) // (1 + 2 x 1)
    gpu = with_overrides(cfg, {"train.use_gpu": True})
    assert default_max_concurrent(gpu, 2, drv, big) == 2  # 4 GPUs // 2 workers
    monkeypatch.setenv("UNLEARN_TUNE_DRIVER_RESOURCE", "tune_driver")
    drv = driver_resources(cfg, 1, {**big, "tune_driver": 3.0})
    assert drv == {"CPU": 1.0, "tune_driver": 1.0}
    assert default_max_concurrent(cfg, 1, drv, {**big, "tune_driver": 3.0}) == 3
    monkeypatch.delenv("UNLEARN_TUNE_DRIVER_RESOURCE")
    small = driver_resources(cfg, 1, {"CPU": 2.0})
    assert small["CPU"] == 0 and small["memory"] > 0
    monkeypatch.setenv("UNLEARN_TUNE_DRIVER_CPUS", "0.5")
    assert driver_resources(cfg, 1, {"CPU": 2.0}) == {"CPU": 0.5}


def test_optuna_multi_objective_tune_config_runs(tmp_path, ray_local):
    from ray import tune

    from pipelines.sweep.param_space import tune_param_space

    space, obj = load_sweep_space(_space(tmp_path, MULTI, "multi.yaml"))
    tune_config = build_tune_config(
        obj, space, RunConfig(), num_samples=3, scheduler="none", search="optuna", max_concurrent=1
    )

    def trainable(config: dict[str, Any]) -> None:
        lr = config["train.lr"]
        tune.report(
            {"forget.leak_rate": lr, "quality.informativeness": 1 - lr, "retain.vqa_acc": 0.5, "final": 1}
        )

    grid = tune.Tuner(
        tune.with_resources(trainable, {"CPU": 0.5}),
        param_space=tune_param_space(space, grid_as_choice=True),
        tune_config=tune_config,
        run_config=tune.RunConfig(name="optuna-multi", storage_path=str(tmp_path / "ray")),
    ).fit()
    assert len(grid) == 3 and not grid.errors
    assert sorted(Path(r.path).name for r in grid) == ["trial_001", "trial_002", "trial_003"]


# --------------------------------------------------------------------------- concurrent logging


def test_concurrent_trials_log_every_metric_once(tmp_path, mlflow_store, ray_local):
    """4 concurrent Tune trials (4 processes) log live curves into one SQLite store at the same moment,
    each through the callback a sweep trial uses; every step of every curve arrives exactly once."""
    from ray import tune

    from pipelines.sweep.callbacks import LiveCurves

    uri = mlflow_store["tracking_uri"]
    exp_id = tracking.ensure_experiment(uri, "concurrency", tmp_path)
    client = MlflowClient(uri)
    run_ids = [client.create_run(exp_id).info.run_id for _ in range(4)]
    space, _ = load_sweep_space(_space(tmp_path))
    reports, barrier = 25, tmp_path / "barrier"
    barrier.mkdir()

    def trial(config: dict[str, Any]) -> None:
        cb = LiveCurves(uri, config["run_id"], space.objective)
        (barrier / config["run_id"]).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < len(run_ids) and time.monotonic() < deadline:
            time.sleep(0.02)  # all four start writing together
        together = len(list(barrier.iterdir()))
        for step in range(1, reports + 1):
            cb.after_report(
                None,
                [
                    {
                        "step": float(step),
                        "loss": 1.0 / step,
                        "forget.leak_rate": 0.1,
                        "retain.vqa_acc": 0.5,
                        "quality.informativeness": 0.2,
                    }
                ],
                None,
            )
        delivered = False
        for _ in range(20):  # a locked database is retried, as the trial's final flush does
            if delivered := cb.flush():
                break
            time.sleep(0.5)
        tune.report({"delivered": float(delivered), "together": float(together)})

    grid = tune.Tuner(
        tune.with_resources(trial, {"CPU": 0.25}),
        param_space={"run_id": tune.grid_search(run_ids)},
        tune_config=tune.TuneConfig(max_concurrent_trials=len(run_ids)),
        run_config=tune.RunConfig(name="concurrent-logging", storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()
    assert not grid.errors and len(grid) == len(run_ids)
    assert all(r.metrics["delivered"] == 1.0 and r.metrics["together"] == len(run_ids) for r in grid)
    for run_id in run_ids:
        for key in ("train/loss", "eval/forget.leak_rate", "eval/objective"):
            steps = sorted(int(m.step) for m in client.get_metric_history(run_id, key))
            assert steps == list(range(1, reports + 1)), (run_id, key, steps)


def test_tune_sees_only_what_it_reads_and_the_sweep_gets_every_value_back():
    """A trial's report reaches Tune as its decision keys plus one JSON string (Tune keeps statistics of
    every numeric key of every trial for the whole sweep); the sweep unpacks the report as it was made,
    and a flat report (a sweep an older version started) is read as it is."""
    from pipelines.sweep.tune_config import RESULT_KEY, TUNE_KEYS, tune_report, tune_values

    values = {
        "objective": 0.25,
        "step": 20.0,
        "final": 1,
        "trial_name": "trial_007",
        "mlflow_run_id": "abc",
        "forget.leak_rate": 0.0,
        "retain.vqa_acc": 0.75,
        "time/job_s": 1.5,
        "model_dir": "/m",
        "quality.informativeness": 0.5,
    }
    sent = tune_report(values)
    numeric = {k for k, v in sent.items() if isinstance(v, int | float)}
    assert numeric == {"objective", "step", "final"} and set(sent) == {*TUNE_KEYS, RESULT_KEY}
    assert isinstance(sent[RESULT_KEY], str)
    assert tune_values(sent) == values
    # A multi-objective search reads its metrics from the report: they stay where it looks.
    multi = tune_report(values, keep=("quality.informativeness", "forget.leak_rate"))
    assert multi["quality.informativeness"] == 0.5 and multi["forget.leak_rate"] == 0.0
    assert tune_values(multi) == values
    flat = {"objective": 0.5, "step": 10.0, "forget.leak_rate": 0.25}
    assert tune_values(flat) == flat
