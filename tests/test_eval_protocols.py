"""`unlearn eval`'s runner under a protocol: a real tiny model answers the protocol's prompts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn_core.data.encode import collate, encode_example, model_inputs
from unlearn_core.eval.few_shot import plan_few_shot
from unlearn_core.eval.protocols import get_protocol
from unlearn_core.eval.runner import evaluate_model, model_outputs, select_eval_rows
from unlearn_core.eval.score import score_outputs
from unlearn_core.models.tiny import build_tiny_llava
from unlearn_core.models.tokenizer import train_word_tokenizer

OPTIONS = ["painter", "lawyer", "pilot", "chef"]
MLLMU = get_protocol("mllmu-bench")


def _row(sid: str, split: str, task: str, answer: str, options: list[str] | None, image: np.ndarray | None):
    return {
        "sample_id": sid,
        "entity_id": "mllmu:1",
        "split": split,
        "task": task,
        "question": "What is the job?",
        "answer": answer,
        "options": options,
        "private_facts": "{}",
        "visible_attributes": "{}",
        "image": image,
    }


def test_runner_generates_lettered_answers_under_a_benchmark_protocol() -> None:
    torch.manual_seed(0)
    img = np.full((32, 32, 3), 120, dtype=np.uint8)
    mc = _row("mllmu:forget_5:1:mc_vqa:00", "forget", "mc_vqa", "lawyer", OPTIONS, img)
    prompt = MLLMU.prompt(mc)
    tok = train_word_tokenizer([prompt, "B", "What is the job?"])
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=16, hidden=64, vision_layers=2, text_layers=2
    )
    batch = collate([{**encode_example(proc, question=prompt, answer="B", image=img), "image": img}], proc)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    outs = model_outputs(model, proc, [mc], protocol=MLLMU)
    assert outs[mc["sample_id"]]["generation"].strip() == "B"  # the lettered prompt, not the bare question
    result = score_outputs([mc], outs, MLLMU)
    assert result["metrics"]["mllmu.forget.mc_acc_image"] == 1.0
    assert result["per_sample"][0]["letter"] == "B" and result["per_sample"][0]["correct"] is True

    assert (
        evaluate_model(model, proc, [mc])["mllmu.forget.mc_acc_image"] == 1.0
    )  # in-training eval: same protocol

    synthetic = model_outputs(model, proc, [mc])  # default protocol: option log-probs, names unchanged
    assert (
        set(synthetic[mc["sample_id"]]) == {"option_scores"}
        and len(synthetic[mc["sample_id"]]["option_scores"]) == 4
    )


def test_each_group_samples_on_its_own_so_a_new_group_moves_no_other() -> None:
    def rows(splits: tuple[str, ...]) -> list[dict]:
        task = {"retain_unseen": "guided", "utility": "caption"}
        return [_row(f"{s}/{i}", s, task[s], "a", None, None) for s in splits for i in range(40)]

    def picked(selected: list[dict], split: str) -> list[str]:
        return [r["sample_id"] for r in selected if r["split"] == split]

    both = select_eval_rows(rows(("retain_unseen", "utility")), 8)
    alone = select_eval_rows(rows(("utility",)), 8)
    assert len(picked(both, "retain_unseen")) == 8  # sorted before utility: a shared generator would move it
    assert len(picked(both, "utility")) == 8 and picked(both, "utility") == picked(alone, "utility")
    assert picked(select_eval_rows(rows(("utility",)), 8, seed=1), "utility") != picked(alone, "utility")


def test_benchmark_protocols_evaluate_every_converted_task() -> None:
    rows = [
        _row(f"s{i}", split, task, "x", None, None)
        for i, (split, task) in enumerate(
            [
                ("utility", "mc_vqa"),
                ("utility", "generation"),
                ("forget", "fact_vqa"),
                ("retain", "caption"),
                ("forget_unseen", "mc_text"),
                ("forget", "text_qa"),
            ]
        )
    ]
    every = {(r["split"], r["task"]) for r in select_eval_rows(rows, 8, every_task=True)}
    assert every == {(r["split"], r["task"]) for r in rows}
    default = {(r["split"], r["task"]) for r in select_eval_rows(rows, 8)}
    assert ("utility", "mc_vqa") not in default  # the synthetic protocol's fixed task list, unchanged


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (
            "mllmu-bench",
            {
                (split, task)
                for split in ("forget", "retain", "forget_unseen", "retain_unseen", "utility")
                for task in ("cloze", "generation", "mc_text", "mc_vqa", "open_vqa")
            }
            | {("forget", "fact_vqa"), ("retain", "fact_vqa")},
        ),
        (
            "clear",
            {(split, task) for split in ("forget", "retain") for task in ("caption", "mc_vqa", "text_qa")}
            | {("utility", "mc_vqa")},
        ),
    ],
)
def test_in_training_eval_selects_every_converted_task(tmp_path, fmt: str, expected: set) -> None:
    """The ``eval/*`` curves of `unlearn run` cover the (split, task) pairs of the final evaluation: on
    converted MLLMU-Bench and CLEAR records every task of every split (the synthetic task list would
    keep only 19 of 27 MLLMU-Bench pairs and 2 of 7 CLEAR pairs), at most a quarter of
    ``train.eval_max_samples`` rows each (at least 4)."""
    import real_fixtures as rf

    from pipelines.train.driver import in_training_selection
    from unlearn_core.data.adapters import convert
    from unlearn_core.eval.score import load_record_rows

    writer = rf.write_mllmu_bench if fmt == "mllmu-bench" else rf.write_clear
    writer(tmp_path / "src")
    convert(fmt, tmp_path / "src", tmp_path / "rec")
    rows = load_record_rows(tmp_path / "rec")
    assert {(r["split"], r["task"]) for r in rows} == expected  # what the converter made

    # MLLMU-Bench's few-shot examples: their people's own questions are not evaluated (eval.py)
    evaluable = plan_few_shot(rows)[0] if fmt == "mllmu-bench" else rows
    assert (fmt == "clear") == (len(evaluable) == len(rows))
    picked = in_training_selection(rows, eval_max_samples=64)  # 16 per pair: every evaluable row
    assert {(r["split"], r["task"]) for r in picked} == {(r["split"], r["task"]) for r in evaluable}
    assert sorted(r["sample_id"] for r in picked) == sorted(r["sample_id"] for r in evaluable)
    assert all(
        r.get("few_shot") is not None
        for r in picked
        if r["task"] in ("mc_vqa", "mc_text", "cloze") and r["split"] != "utility"
    ) == (fmt == "mllmu-bench")
    synthetic_pairs = {(r["split"], r["task"]) for r in select_eval_rows(rows, 16)}
    assert len(synthetic_pairs) == {"mllmu-bench": 19, "clear": 2}[fmt]  # what the old selection kept

    small = Counter((r["split"], r["task"]) for r in in_training_selection(rows, eval_max_samples=8))
    full = Counter((r["split"], r["task"]) for r in evaluable)
    assert small == {pair: min(4, n) for pair, n in full.items()}  # max(4, 8 // 4) = 4 per pair


def test_eval_pipeline_on_converted_mllmu_bench_shards(tmp_path, ray_local, mlflow_store) -> None:
    """`unlearn eval --track` on real shards of a converted benchmark: its protocol is picked from the
    rows, every converted task is evaluated, every benchmark metric reaches the JSON report and, under
    the same name, its own MLflow run (real SQLite store), with the JSON as an artifact."""
    import json

    import real_fixtures as rf
    from mlflow.tracking import MlflowClient
    from pipeline_fixtures import save_tiny_model

    from pipelines.cli import main
    from pipelines.shards import shard_records
    from unlearn_core.data.adapters import convert

    rf.write_mllmu_bench(tmp_path / "src")
    convert("mllmu-bench", tmp_path / "src", tmp_path / "rec")
    shard_records(tmp_path / "rec", tmp_path / "shards", image_size=32, actors=1)
    model = save_tiny_model(tmp_path / "shards", tmp_path / "model")
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--model",
                str(model),
                "--shards",
                str(tmp_path / "shards"),
                "--out",
                str(out),
                "--max-per-group",
                "8",
                "--workdir",
                str(tmp_path / "wd"),
                "--track",
                "--zero-shot",  # one forget person here: few-shot examples would leave no forget question
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["protocol"] == "mllmu-bench-zero-shot" and "few_shot" not in report
    client = MlflowClient(mlflow_store["tracking_uri"])  # the store $MLFLOW_TRACKING_URI names
    (run,) = client.search_runs([client.get_experiment_by_name("lvlm-unlearn").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["job"] == "eval"
    assert run.data.params["protocol"] == "mllmu-bench-zero-shot" and run.data.params["max_per_group"] == "8"
    assert run.data.metrics == pytest.approx(report["metrics"], nan_ok=True)  # every name, same value
    assert sum(k.startswith("mllmu.") for k in run.data.metrics) >= 50
    assert run.data.metrics["mllmu.utility.mc_acc_text"] == report["metrics"]["mllmu.utility.mc_acc_text"]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["eval.json"]
    logged = json.loads(
        Path(client.download_artifacts(run.info.run_id, "eval.json", str(tmp_path))).read_text()
    )
    assert logged == report
    tasks = {(r["split"], r["task"]) for r in report["per_sample"]}
    assert {
        ("utility", "mc_text"),
        ("forget_unseen", "cloze"),
        ("retain", "fact_vqa"),
        ("forget", "open_vqa"),
    } <= tasks
    m = report["metrics"]
    for split in ("forget", "retain", "forget_unseen", "retain_unseen", "utility"):
        for name in ("mc_acc_image", "mc_acc_mmu_text", "cloze_acc_image", "rougeL_text", "bleu_image"):
            assert f"mllmu.{split}.{name}" in m, (split, name)
    assert report["counts"]["mllmu.utility.mc_acc_text"] == 1
    assert not any(
        k.startswith("logprob.") or k.endswith(".vqa_acc") for k in m
    )  # no log-prob under this name


@pytest.mark.slow
def test_few_shot_eval_states_its_draw_and_score_reads_its_generations(tmp_path, ray_local) -> None:
    """`unlearn eval` on MLLMU-Bench shards prompts few-shot by default: the draw is stated in the
    report, the drawn people's own questions are not evaluated (one MC person, two cloze people per
    split), `--zero-shot` evaluates them all; `unlearn score` of the few-shot generations gives the
    report's benchmark metrics unchanged."""
    import json

    import real_fixtures as rf
    from pipeline_fixtures import save_tiny_model

    from pipelines.cli import main
    from pipelines.shards import shard_records
    from unlearn_core.data.adapters import convert
    from unlearn_core.eval.score import score_predictions

    names = {str(i): f"Person{i} Name{i}" for i in range(1, 7)}
    colors = {pid: (40 * int(pid), 200 - 30 * int(pid), 90) for pid in names}
    profiles = {pid: rf.mllmu_profile(pid, name, colors[pid]) for pid, name in names.items()}
    tables = {
        "forget_5": [profiles[p] for p in "123"],
        "retain_95": [profiles[p] for p in "456"],
        "Full_Set": [{**profiles[p], "Directory": f"images/{p}.png"} for p in names],
        "Test_Set": [rf.mllmu_test_profile(p, n, [colors[p], (9, 9, 9)]) for p, n in names.items()],
        "Retain_Set": [rf.mllmu_profile(rf.MLLMU_CELEBRITY[0], rf.MLLMU_CELEBRITY[1], (128, 128, 0))],
    }
    rf.write_mllmu_bench(tmp_path / "src", tables, unknown_folder=False)
    convert("mllmu-bench", tmp_path / "src", tmp_path / "rec")
    shard_records(tmp_path / "rec", tmp_path / "shards", image_size=32, actors=1)
    model = save_tiny_model(tmp_path / "shards", tmp_path / "model")
    reports = {}
    for mode, extra in (("few", []), ("zero", ["--zero-shot"])):
        out = tmp_path / f"{mode}.json"
        argv = ["eval", "--model", str(model), "--shards", str(tmp_path / "shards"), "--out", str(out)]
        assert main([*argv, "--workdir", str(tmp_path / "wd"), *extra]) == 0
        reports[mode] = json.loads(out.read_text())
    few, zero = reports["few"], reports["zero"]
    assert few["protocol"] == "mllmu-bench" and zero["protocol"] == "mllmu-bench-zero-shot"
    shots = few["few_shot"]
    assert shots["seed"] == 0 and "few_shot" not in zero
    for split in ("forget", "forget_unseen", "retain", "retain_unseen"):
        assert len(shots["plans"][f"{split}/classification/image"]["people"]) == 1
        assert len(shots["plans"][f"{split}/cloze/image"]["people"]) == 2
    assert not any(k.startswith("utility/") for k in shots["plans"])
    skipped = {sid for plan in shots["plans"].values() for sid in plan["skipped"]}
    assert len(skipped) == shots["skipped_rows"] == zero["n_rows"] - few["n_rows"] > 0
    assert {s["sample_id"] for s in zero["per_sample"]} - {
        s["sample_id"] for s in few["per_sample"]
    } == skipped
    # 3 forget people, one image MC question each: the drawn one's is an example, not a question
    assert (
        zero["counts"]["mllmu.forget.mc_acc_image"] == 3 and few["counts"]["mllmu.forget.mc_acc_image"] == 2
    )
    assert few["counts"]["mllmu.forget.cloze_acc_image"] == 1  # two of three people drawn for cloze
    assert few["counts"]["mllmu.utility.mc_acc_image"] == zero["counts"]["mllmu.utility.mc_acc_image"]

    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(s) + "\n" for s in few["per_sample"]))
    scored = score_predictions(tmp_path / "rec", predictions)
    bench = {k: v for k, v in few["metrics"].items() if k.startswith("mllmu.")}
    assert {k: v for k, v in scored["metrics"].items() if k.startswith("mllmu.")} == pytest.approx(bench)
    assert scored["problems"]["missing_ids"]["count"] >= len(skipped)  # not generated: counted, not scored
