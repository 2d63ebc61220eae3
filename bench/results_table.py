"""The results table of a workdir as Markdown, every cell read from a run's own evaluation JSON.

    .venv/bin/python bench/results_table.py --workdir workdir                  # every metric
    .venv/bin/python bench/results_table.py --workdir workdir --metrics compact

Columns, in the order the runs started: the vanilla model (the latest finished ``finetune-vanilla``
run), the latest finished ``unlearn run`` of each method, and each sweep's champion (the trial run
named by the sweep's ``champion_trial`` tag), as ``<method> (champion)``. After ``make run`` this is
the table the demo prints. Each cell comes from the ``eval-*.json`` the run logged as an MLflow
artifact (the evaluation the run itself wrote); MLflow's store only says which run is which.
``--tracking-uri`` reads another store (default: the workdir's ``mlflow.db``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

# The rows of the README's table: what is forgotten, what is kept, how the model answers.
COMPACT = (
    "forget.leak_rate",
    "forget_unseen.leak_rate",
    "forget.vqa_acc",
    "retain.vqa_acc",
    "retain.text_qa_acc",
    "utility.caption_f1",
    "quality.informativeness",
    "quality.hallucination",
    "quality.refusal_rate",
    "quality.degeneracy_rate",
    "guided_unseen.attribute_precision",
)


def run_columns(tracking_uri: str, experiment: str = "lvlm-unlearn") -> dict[str, Any]:
    """Column name -> the finished MLflow run it shows (vanilla, each method's latest run, each
    sweep's champion trial), in the order the runs started."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"{tracking_uri}: no experiment {experiment!r} (run `make run` first)")
    runs = client.search_runs(
        [exp.experiment_id], "attributes.status = 'FINISHED'", order_by=["start_time ASC"]
    )
    columns: dict[str, Any] = {}
    for run in runs:  # later runs replace earlier ones of the same column
        tags = run.data.tags
        if tags.get("job") == "finetune" and run.info.run_name == "finetune-vanilla":
            columns.pop("vanilla", None)
            columns["vanilla"] = run
        elif tags.get("job") == "unlearn":
            columns.pop(tags["method"], None)
            columns[tags["method"]] = run
        elif tags.get("job") == "sweep" and tags.get("champion_trial"):
            (champion,) = client.search_runs(
                [exp.experiment_id],
                f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and tags.trial_name = '{tags['champion_trial']}'",
            )
            name = f"{tags['method']} (champion)"
            columns.pop(name, None)
            columns[name] = champion
    return columns


def evaluation(tracking_uri: str, run: Any) -> dict[str, Any]:
    """The evaluation JSON the run logged (its ``eval-*.json`` artifact)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    names = [
        a.path
        for a in MlflowClient(tracking_uri).list_artifacts(run.info.run_id)
        if a.path.startswith("eval-")
    ]
    if len(names) != 1:
        raise SystemExit(f"run {run.info.run_id}: expected one eval-*.json artifact, found {names}")
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=names[0], tracking_uri=tracking_uri
    )
    return json.loads(Path(local).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdir", help="the workdir of `make run` (default: workdir)")
    parser.add_argument("--tracking-uri", default=None, help="default: sqlite:///WORKDIR/mlflow.db")
    parser.add_argument("--metrics", default="all", help="all, compact, or a comma-separated list")
    args = parser.parse_args()

    from pipelines.console import quiet_library_bars
    from unlearn_core.eval.report import format_markdown_table

    quiet_library_bars(always=True)  # MLflow's download bar, once per artifact
    uri = args.tracking_uri or f"sqlite:///{Path(args.workdir).resolve() / 'mlflow.db'}"
    reports = {name: evaluation(uri, run) for name, run in run_columns(uri).items()}
    metrics = (
        None if args.metrics == "all" else COMPACT if args.metrics == "compact" else args.metrics.split(",")
    )
    print(format_markdown_table({name: r["metrics"] for name, r in reports.items()}, metrics))
    rows = sorted({r["n_rows"] for r in reports.values()})
    print(f"\n{len(reports)} runs; evaluation rows per run: {', '.join(map(str, rows))}")


if __name__ == "__main__":
    main()
