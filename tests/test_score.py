"""`unlearn data convert` -> `unlearn score` end to end on fixtures in the published schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import real_fixtures as rf
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from pipelines.cli import main
from unlearn_core.data import records_io
from unlearn_core.eval.answer_parsing import correct_letter
from unlearn_core.eval.metrics import evaluate_outputs
from unlearn_core.eval.protocols import get_protocol, resolve_protocol
from unlearn_core.eval.score import load_record_rows, score_outputs

MC = ("mc_vqa", "mc_text")
PER_SAMPLE_FIELDS = {
    "mc": {"sample_id", "task", "letter", "letter_mmunlearner", "correct"},
    "cloze": {"sample_id", "task", "correct"},
    "text": {"sample_id", "task", "rouge1", "rouge2", "rougeL", "rougeL_recall", "bleu"},
}


def _records(folder: Path) -> list[dict[str, Any]]:
    return records_io.read_records(folder).drop_columns(["image"]).to_pylist()


def _write_lines(path: Path, items: list[Any]) -> Path:
    path.write_text("\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n")
    return path


def _mllmu_generation(r: dict[str, Any]) -> str:
    if r["task"] in MC:
        letter = correct_letter(r["answer"], r["options"])
        return f"({letter})" if r["split"] == "forget" else f"{letter}\nUSER: next? ASSISTANT: A"
    if r["task"] == "cloze":
        return f"It is {r['answer'].upper()}." if r["image"] is None else "no idea"
    return r["answer"]


def test_convert_then_score_mllmu_bench(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rf.write_mllmu_bench(tmp_path / "src")
    assert (
        main(
            [
                "data",
                "convert",
                "--format",
                "mllmu-bench",
                "--source",
                str(tmp_path / "src"),
                "--out",
                str(tmp_path / "rec"),
            ]
        )
        == 0
    )
    records = _records(tmp_path / "rec")
    records_img = {r["sample_id"]: r for r in records_io.read_records(tmp_path / "rec").to_pylist()}
    for r in records:
        r["image"] = records_img[r["sample_id"]]["image"]
    missing, non_string, unusable, *scored = sorted(records, key=lambda r: r["sample_id"])
    lines: list[Any] = [{"sample_id": r["sample_id"], "generation": _mllmu_generation(r)} for r in scored]
    lines += [
        {"sample_id": non_string["sample_id"], "generation": ["not", "text"]},
        {"sample_id": unusable["sample_id"], "prediction": "B"},  # a known id, no field we read
        {"sample_id": "mllmu:nobody:9:cloze:00", "generation": "x"},
        {"generation": "no id"},
        "{broken",
        {"sample_id": scored[0]["sample_id"], "generation": "a second answer"},
    ]
    preds = _write_lines(tmp_path / "preds.jsonl", lines)
    out = tmp_path / "score.json"
    assert (
        main(["score", "--records", str(tmp_path / "rec"), "--predictions", str(preds), "--out", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "mllmu.forget.mc_acc_image" in printed

    assert report["protocol"] == "mllmu-bench"  # from the records' source
    p = report["problems"]
    assert (p["unknown_ids"]["count"], p["unknown_ids"]["first"]) == (1, ["mllmu:nobody:9:cloze:00"])
    assert p["missing_ids"]["first"] == [missing["sample_id"]]
    assert p["non_string_generations"]["first"] == [non_string["sample_id"]]
    assert p["unreadable_lines"]["count"] == 1 and p["lines_without_sample_id"]["count"] == 1
    assert p["duplicate_ids"]["first"] == [scored[0]["sample_id"]]
    assert report["n_records"] == len(records) and report["n_scored"] == len(scored)
    no_field = p["lines_without_usable_fields"]  # the non-string one is not scored either
    assert (no_field["count"], no_field["first"]) == (
        2,
        sorted([non_string["sample_id"], unusable["sample_id"]]),
    )
    assert report["n_scored"] + p["missing_ids"]["count"] + no_field["count"] == report["n_records"]
    assert f"lines_without_usable_fields: 2 (first: {no_field['first'][0]}" in printed

    m, n = report["metrics"], report["counts"]
    assert m["mllmu.forget.mc_acc_image"] == 0.0 and m["mllmu.forget.mc_acc_mmu_image"] == 1.0  # "(B)"
    assert m["mllmu.forget.mc_acc_text"] == 0.0 and m["mllmu.forget.mc_acc_mmu_text"] == 1.0
    assert m["mllmu.retain.mc_acc_image"] == 1.0 and m["mllmu.forget_unseen.mc_acc_image"] == 1.0
    assert m["mllmu.utility.mc_acc_text"] == 1.0  # Retain_Set: the model-utility set
    assert m["mllmu.retain.cloze_acc_text"] == 1.0 and m["mllmu.retain.cloze_acc_image"] == 0.0
    assert m["mllmu.retain.rougeL_image"] == pytest.approx(1.0) and m[
        "mllmu.retain.rouge2_text"
    ] == pytest.approx(1.0)
    retain_text = [
        r for r in scored if r["split"] == "retain" and r["task"] == "generation" and r["image"] is None
    ]
    bleus = [
        sentence_bleu(
            [r["answer"].split()], r["answer"].split(), smoothing_function=SmoothingFunction().method1
        )
        for r in retain_text
    ]
    assert m["mllmu.retain.bleu_text"] == pytest.approx(sum(bleus) / len(bleus))
    assert n["mllmu.retain.bleu_text"] == len(retain_text) == 2
    assert n["mllmu.forget.mc_acc_image"] == sum(
        1 for r in scored if r["split"] == "forget" and r["task"] == "mc_vqa"
    )
    assert "forget.vqa_acc" not in m  # the log-prob name is never fed generated letters
    assert (
        m["forget.leak_rate"] == 1.0
    )  # the project's own checks still run (open_vqa answers name the person)

    rows = {r["sample_id"]: r for r in report["per_sample"]}
    assert {r["task"] for r in rows.values()} == {
        "open_vqa",
        "mc_vqa",
        "mc_text",
        "generation",
        "cloze",
        "fact_vqa",
    }
    for r in scored:
        kind = "mc" if r["task"] in MC else "cloze" if r["task"] == "cloze" else "text"
        assert PER_SAMPLE_FIELDS[kind] <= set(rows[r["sample_id"]]), r["sample_id"]
    forget_mc = next(r for r in scored if r["split"] == "forget" and r["task"] == "mc_vqa")
    assert (
        rows[forget_mc["sample_id"]]["letter"] is None
        and rows[forget_mc["sample_id"]]["letter_mmunlearner"] == "B"
    )


def test_convert_then_score_clear_with_truth_ratio_and_forget_quality(tmp_path: Path) -> None:
    from scipy.stats import ks_2samp

    rf.write_clear(tmp_path / "src")
    assert (
        main(
            [
                "data",
                "convert",
                "--format",
                "clear",
                "--source",
                str(tmp_path / "src"),
                "--out",
                str(tmp_path / "rec"),
            ]
        )
        == 0
    )
    rows = load_record_rows(tmp_path / "rec")
    assert resolve_protocol(rows).name == "clear"

    def lines(losses: dict[str, tuple[float, list[float]]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            gen = r["answer"] if r["task"] not in MC else f"**{correct_letter(r['answer'], r['options'])}**"
            item: dict[str, Any] = {"sample_id": r["sample_id"], "generation": gen}
            if r["sample_id"] in losses:
                item["paraphrased_loss"], item["perturbed_losses"] = losses[r["sample_id"]]
            out.append(item)
        return out

    forget_mc = next(r["sample_id"] for r in rows if r["split"] == "forget" and r["task"] == "mc_vqa")
    retain_mc = next(r["sample_id"] for r in rows if r["split"] == "retain" and r["task"] == "mc_vqa")
    mine = {forget_mc: (1.0, [1.5, 2.5]), retain_mc: (1.0, [3.0, 3.0])}
    _write_lines(tmp_path / "p.jsonl", lines(mine))
    _write_lines(tmp_path / "ref.jsonl", lines({forget_mc: (2.0, [1.0, 1.0])}))
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "score",
                "--records",
                str(tmp_path / "rec"),
                "--predictions",
                str(tmp_path / "p.jsonl"),
                "--out",
                str(out),
                "--reference-predictions",
                str(tmp_path / "ref.jsonl"),
            ]
        )
        == 0
    )
    m = json.loads(out.read_text())["metrics"]
    assert m["clear.forget.rougeL_recall_image"] == pytest.approx(1.0)  # captions
    assert m["clear.forget.rougeL_recall_text"] == pytest.approx(1.0)  # TOFU answers
    assert m["clear.real_faces.mc_acc_mmu_image"] == 1.0 and m["clear.real_faces.mc_acc_image"] == 0.0
    assert m["clear.real_world.mc_acc_mmu_image"] == 1.0
    t_forget, t_retain = pytest.approx(2.718281828 ** (1.0 - 2.0)), 2.718281828 ** (1.0 - 3.0)
    assert m["clear.forget.truth_ratio"] == t_forget  # min(t, 1/t) with t < 1
    assert m["clear.retain.truth_ratio"] == pytest.approx(1 - t_retain)
    expected = ks_2samp([2.718281828**-1.0], [2.718281828**1.0]).pvalue
    assert m["clear.forget_quality"] == pytest.approx(expected)


def test_synthetic_protocol_keeps_the_project_metric_names_and_values() -> None:
    from test_metrics import OUTPUTS, RECORDS  # the hand-built synthetic set of the metric tests

    base = evaluate_outputs(RECORDS, OUTPUTS)
    assert resolve_protocol(RECORDS).name == "synthetic"
    scored = score_outputs(RECORDS, OUTPUTS, get_protocol("synthetic"))
    assert scored["metrics"] == base.metrics and scored["counts"] == base.counts
    assert [r["sample_id"] for r in scored["per_sample"]] == [r["sample_id"] for r in base.per_sample]
    for mine, theirs in zip(scored["per_sample"], base.per_sample, strict=True):
        assert {k: mine[k] for k in theirs} == theirs


def test_protocol_prompts_follow_the_reference_formats() -> None:
    mllmu, clear, synthetic = (get_protocol(n) for n in ("mllmu-bench", "clear", "synthetic"))
    mc = {"task": "mc_vqa", "question": "Who?", "options": ["x", "y"], "has_image": True}
    assert mllmu.prompt(mc) == "Who?\nA: x\nB: y\nJust give ONE letter representing the answer directly."
    assert synthetic.prompt(mc) == "Who?" and not synthetic.generated_mc
    cloze = {"task": "cloze", "question": "Born in __.", "has_image": False}
    assert mllmu.prompt(cloze) == (
        "Born in [Blank].\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
    )
    gen = {"task": "generation", "question": "Job?", "has_image": False}
    assert mllmu.prompt(gen).endswith("in one sentence in ENGLISH.")
    assert mllmu.prompt({**gen, "has_image": True}).endswith("in one sentence accurately in ENGLISH.")
    assert (
        mllmu.max_new_tokens(gen),
        clear.max_new_tokens({"task": "caption"}),
        synthetic.max_new_tokens(gen),
    ) == (50, 300, 40)
    with pytest.raises(
        ValueError, match="valid protocols: synthetic, mllmu-bench, mllmu-bench-zero-shot, clear"
    ):
        get_protocol("tofu")
    with pytest.raises(ValueError, match="mix benchmarks"):
        resolve_protocol([{"source": "clear:forget10"}, {"source": "mllmu-bench:forget_5"}])
