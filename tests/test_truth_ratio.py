"""CLEAR's truth ratio, probability and forget quality computed by `unlearn eval` with the loaded model.

Formulas: somvy/multimodal_unlearning ``mm/eval.py`` (``eval_perturbation_ratio``: losses are the
summed answer-token cross-entropy divided by the answer's token count) and ``mm/calculate_metrics.py``
(``compute_model_utility``: truth ratio = exp(set-mean perturbed loss - paraphrased loss), forget
``mean(min(t, 1/t))``, others ``mean(max(0, 1 - 1/t))``; "Prob." of the caption tasks, whose file
names hold ``eval_log``, = ``mean(exp(-avg_gt_loss))`` with no normalisation, lines 119-121 at 3e33dae;
``evaluate_forget_quality``: KS p-value).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from tests.pipeline_fixtures import fit_on_batch
from unlearn_core.data.adapters.clear import CAPTION_QUESTION
from unlearn_core.data.encode import collate, encode_example, model_inputs
from unlearn_core.eval.bench_metrics import (
    caption_probability,
    forget_quality,
    score_benchmark,
    set_truth_ratios,
    truth_ratio_score,
)
from unlearn_core.eval.protocols import get_protocol
from unlearn_core.eval.runner import model_outputs
from unlearn_core.eval.score import score_outputs
from unlearn_core.models.generate import answer_mean_nll
from unlearn_core.models.tiny import build_tiny_llava
from unlearn_core.models.tokenizer import train_word_tokenizer

CLEAR = get_protocol("clear")
PARAPHRASED = "someone in a blue coat stands near a window"
PERTURBED = ["a dog sleeps on a sofa", "a red car waits outside"]
CAPTION = "a person in a blue coat by the window"


def _clear_row(sid: str, split: str, image: np.ndarray) -> dict:
    variants = {"paraphrased": PARAPHRASED, "perturbed": PERTURBED, "caption": CAPTION}
    return {
        "sample_id": sid,
        "entity_id": "clear:Ann Smith",
        "split": split,
        "task": "mc_vqa",
        "question": "Who is this person?",
        "answer": "Ann Smith",
        "options": ["Ann Smith", "Zed Quinn"],
        "private_facts": "{}",
        "visible_attributes": "{}",
        "answer_variants": json.dumps(variants),
        "image": image,
    }


def _two_caption_rows(config: str, split: str) -> list[dict]:
    """Two CLEAR caption rows (scored by their losses only) of one config and split."""
    return [
        {
            "sample_id": f"clear:{config}:{i}",
            "split": split,
            "task": "mc_vqa",
            "answer": "A",
            "options": ["A", "B"],
            "has_image": True,
        }
        for i in range(2)
    ]


def test_truth_ratio_metric_uses_the_set_mean_perturbed_loss() -> None:
    """Two forget samples whose own perturbed losses differ: the reference averages the perturbed loss
    over the whole set before the ratio (calculate_metrics.py), not per sample."""
    rows = _two_caption_rows("forget10_perturbed", "forget")
    outputs = {
        rows[0]["sample_id"]: {"paraphrased_loss": 1.0, "perturbed_losses": [1.0, 1.0]},
        rows[1]["sample_id"]: {"paraphrased_loss": 2.0, "perturbed_losses": [3.0, 5.0]},
    }
    result = score_benchmark(rows, outputs, CLEAR)
    mean_perturbed = (1 + 1 + 3 + 5) / 4  # 2.5
    t = [math.exp(mean_perturbed - 1.0), math.exp(mean_perturbed - 2.0)]
    expected = (min(t[0], 1 / t[0]) + min(t[1], 1 / t[1])) / 2
    assert result.metrics["clear.forget.truth_ratio"] == pytest.approx(expected)
    per_sample_mean = (1.0 + math.exp(2.0 - 4.0)) / 2  # what a per-sample perturbed mean would give
    assert abs(expected - per_sample_mean) > 0.1
    assert result.counts["clear.forget.truth_ratio"] == 2
    # per-sample field: mm/eval.py's own ratio, exp(paraphrased - mean of this sample's perturbed)
    assert result.per_sample[rows[1]["sample_id"]]["truth_ratio"] == pytest.approx(math.exp(2.0 - 4.0))
    assert result.per_sample[rows[1]["sample_id"]]["perturbed_losses"] == [3.0, 5.0]


def test_caption_prob_is_the_plain_mean_caption_probability() -> None:
    """CLEAR ``mm/calculate_metrics.py`` ``compute_model_utility``: for the Forget / Retain caption tasks
    (``"eval_log" in task_file``) "Prob." = mean(exp(-avg_gt_loss)), the caption's mean token loss;
    the perturbed captions only feed the truth ratio (the normalised form would give 0.585, not 0.371)."""
    rows = _two_caption_rows("retain_perturbed", "retain")
    outputs = {
        rows[0]["sample_id"]: {"paraphrased_loss": 1.0, "perturbed_losses": [0.5, 1.0], "caption_loss": 0.5},
        rows[1]["sample_id"]: {"paraphrased_loss": 2.0, "perturbed_losses": [4.0, 4.0], "caption_loss": 2.0},
    }
    result = score_benchmark(rows, outputs, CLEAR)
    expected = (math.exp(-0.5) + math.exp(-2.0)) / 2
    assert result.metrics["clear.retain.prob"] == pytest.approx(expected) == pytest.approx(0.3709, abs=1e-4)
    assert result.counts["clear.retain.prob"] == 2
    assert result.per_sample[rows[1]["sample_id"]]["prob"] == pytest.approx(math.exp(-2.0))
    normalised = (
        math.exp(-0.5) / (math.exp(-0.5) + math.exp(-0.5) + math.exp(-1.0))
        + math.exp(-2.0) / (math.exp(-2.0) + 2 * math.exp(-4.0))
    ) / 2
    assert normalised == pytest.approx(0.5853, abs=1e-4)  # what P / (P + sum P(perturbed)) would give
    no_caption = {rows[0]["sample_id"]: {"paraphrased_loss": 1.0, "perturbed_losses": [0.5]}}
    assert "clear.retain.prob" not in score_benchmark(rows, no_caption, CLEAR).metrics


def test_retain_truth_ratio_probability_and_forget_quality_formulas() -> None:
    t = set_truth_ratios([1.0, 2.0], [[2.0], [4.0]])  # set mean perturbed 3.0
    assert t == pytest.approx([math.exp(2.0), math.exp(1.0)])
    assert truth_ratio_score(t, forget=False) == pytest.approx(((1 - math.exp(-2)) + (1 - math.exp(-1))) / 2)
    assert truth_ratio_score([0.5], forget=False) == 0.0  # max(0, 1 - 1/t)
    assert caption_probability(1.0) == pytest.approx(math.exp(-1))  # not / (P + sum P(perturbed))
    mine, ref = [(1.0, [2.0]), (1.5, [2.0]), (0.5, [2.0])], [(3.0, [1.0]), (2.5, [1.0])]
    expected = ks_2samp(
        set_truth_ratios([1.0, 1.5, 0.5], [[2.0]] * 3), set_truth_ratios([3.0, 2.5], [[1.0]] * 2)
    )
    assert forget_quality(mine, ref) == pytest.approx(expected.pvalue)


def test_answer_mean_nll_is_the_mean_per_answer_token() -> None:
    torch.manual_seed(0)
    tok = train_word_tokenizer([CAPTION_QUESTION, PARAPHRASED, *PERTURBED])
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=16, hidden=32, vision_layers=1, text_layers=1
    )
    img = np.full((32, 32, 3), 90, dtype=np.uint8)
    (loss,) = answer_mean_nll(model, proc, CAPTION_QUESTION, img, [PARAPHRASED])
    enc = encode_example(proc, question=CAPTION_QUESTION, answer=PARAPHRASED, image=img)
    batch = collate([{**enc, "image": img}], proc)
    model.eval()
    with torch.no_grad():
        hf_mean = model(
            **model_inputs(batch), labels=batch["labels"]
        ).loss.item()  # HF: mean over answer tokens
    assert loss == pytest.approx(hf_mean, rel=1e-5)


def test_training_on_the_paraphrased_caption_moves_the_truth_ratio() -> None:
    """A model fine-tuned on the paraphrased caption (image + caption question) finds it far more likely
    than the perturbed ones: its retain-style truth ratio score rises from ~0 towards 1 and its
    forget-style score min(t, 1/t) falls, against the same model before training."""
    torch.manual_seed(0)
    img = np.full((32, 32, 3), 140, dtype=np.uint8)
    tok = train_word_tokenizer([CAPTION_QUESTION, PARAPHRASED, CAPTION, *PERTURBED, "Who is this person?"])
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=16, hidden=64, vision_layers=2, text_layers=2
    )
    rows = [
        _clear_row("clear:retain_perturbed:000000", "retain", img),
        _clear_row("clear:forget10_perturbed:000000", "forget", img),
    ]

    def scores() -> tuple[dict, dict]:
        outs = model_outputs(model, proc, rows, protocol=CLEAR, max_new_tokens=4)
        return score_outputs(rows, outs, CLEAR)["metrics"], outs

    before, outs_before = scores()
    assert set(outs_before[rows[0]["sample_id"]]) == {
        "generation",
        "paraphrased_loss",
        "perturbed_losses",
        "caption_loss",
    }
    batch = collate(
        [{**encode_example(proc, question=CAPTION_QUESTION, answer=PARAPHRASED, image=img), "image": img}],
        proc,
    )
    fit_on_batch(model, batch, 40)
    after, outs_after = scores()

    sid = rows[0]["sample_id"]
    assert outs_after[sid]["paraphrased_loss"] < 0.5 * outs_before[sid]["paraphrased_loss"]
    assert min(outs_after[sid]["perturbed_losses"]) > outs_after[sid]["paraphrased_loss"] + 1.0
    assert after["clear.retain.truth_ratio"] > 0.6 > before["clear.retain.truth_ratio"]
    assert after["clear.forget.truth_ratio"] < 0.4 < before["clear.forget.truth_ratio"]


def test_rows_without_variants_get_no_losses_and_other_protocols_compute_none() -> None:
    torch.manual_seed(0)
    tok = train_word_tokenizer([CAPTION_QUESTION, PARAPHRASED, *PERTURBED, "Who is this person?"])
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=16, hidden=32, vision_layers=1, text_layers=1
    )
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    plain = {**_clear_row("clear:forget10:000001", "forget", img), "answer_variants": None}
    outs = model_outputs(
        model,
        proc,
        [plain, _clear_row("clear:forget10_perturbed:0", "forget", img)],
        protocol=CLEAR,
        max_new_tokens=2,
    )
    assert set(outs["clear:forget10:000001"]) == {"generation"}
    mllmu = model_outputs(
        model,
        proc,
        [_clear_row("clear:forget10_perturbed:0", "forget", img)],
        protocol=get_protocol("mllmu-bench"),
        max_new_tokens=2,
    )
    assert set(mllmu["clear:forget10_perturbed:0"]) == {"generation"}


def test_convert_shard_eval_reports_the_truth_ratio_and_score_reads_it_back(
    tmp_path: Path, ray_local
) -> None:
    """CLEAR fixture -> `unlearn data convert` -> shards (answer_variants carried) -> `unlearn eval`:
    the truth ratio equals the score module's formula on the per-sample losses; with
    ``--reference-report`` forget quality is reported; the per-sample rows are `unlearn score` input."""
    import pyarrow.parquet as pq
    import real_fixtures as rf
    from pipeline_fixtures import save_tiny_model

    from pipelines.cli import main
    from pipelines.shards import shard_records
    from unlearn_core.data.adapters import convert

    rf.write_clear(tmp_path / "src")
    convert("clear", tmp_path / "src", tmp_path / "rec")
    shard_records(tmp_path / "rec", tmp_path / "shards", image_size=32, actors=1)
    forget = pq.read_table(tmp_path / "shards" / "forget").to_pylist()
    (mc,) = [r for r in forget if r["task"] == "mc_vqa"]
    assert json.loads(mc["answer_variants"])["perturbed"] == ["A dog on a sofa.", "A red car."]
    assert all(r["answer_variants"] == "{}" for r in forget if r["task"] == "caption")
    model = save_tiny_model(tmp_path / "shards", tmp_path / "model")

    base = [
        "eval",
        "--model",
        str(model),
        "--shards",
        str(tmp_path / "shards"),
        "--max-per-group",
        "4",
        "--workdir",
        str(tmp_path / "wd"),
    ]
    assert main([*base, "--out", str(tmp_path / "ref.json")]) == 0
    ref = json.loads((tmp_path / "ref.json").read_text())
    assert "clear.forget_quality" not in ref["metrics"]
    assert (
        main([*base, "--out", str(tmp_path / "eval.json"), "--reference-report", str(tmp_path / "ref.json")])
        == 0
    )
    report = json.loads((tmp_path / "eval.json").read_text())
    m = report["metrics"]
    assert report["protocol"] == "clear"
    for split, forget_set in (("forget", True), ("retain", False)):
        rows = [r for r in report["per_sample"] if r["split"] == split and "paraphrased_loss" in r]
        assert len(rows) == 1 and len(rows[0]["perturbed_losses"]) == 2
        ratios = set_truth_ratios(
            [r["paraphrased_loss"] for r in rows], [r["perturbed_losses"] for r in rows]
        )
        assert m[f"clear.{split}.truth_ratio"] == pytest.approx(truth_ratio_score(ratios, forget=forget_set))
        assert report["counts"][f"clear.{split}.truth_ratio"] == 1
        assert m[f"clear.{split}.prob"] == pytest.approx(math.exp(-rows[0]["caption_loss"]))
    assert m["clear.forget_quality"] == pytest.approx(1.0)  # same weights, same losses: identical samples

    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in report["per_sample"]))
    assert (
        main(
            [
                "score",
                "--records",
                str(tmp_path / "rec"),
                "--predictions",
                str(preds),
                "--out",
                str(tmp_path / "score.json"),
            ]
        )
        == 0
    )
    scored = json.loads((tmp_path / "score.json").read_text())["metrics"]
    for name in (
        "clear.forget.truth_ratio",
        "clear.retain.truth_ratio",
        "clear.forget.prob",
        "clear.forget.rougeL_recall_image",
    ):
        assert scored[name] == pytest.approx(m[name]), name


def test_records_without_answer_variants_still_shard_with_a_null_column(tmp_path: Path, ray_local) -> None:
    """Records written before the column existed shard as before: every row written, the column null,
    and the manifest's schema and format version name it (so older shard sets are rebuilt)."""
    import pyarrow.parquet as pq
    import real_fixtures as rf

    from pipelines.shards import load_manifest, shard_records
    from unlearn_core.data.adapters import convert

    rf.write_clear(tmp_path / "src")
    convert("clear", tmp_path / "src", tmp_path / "rec")
    for path in (tmp_path / "rec").glob("*.parquet"):
        if path.name != "quarantine.parquet":
            pq.write_table(pq.read_table(path).drop_columns(["answer_variants"]), path)
    report = shard_records(tmp_path / "rec", tmp_path / "shards", image_size=32, actors=1)
    assert report.read == report.written > 0 and report.quarantined == 0
    forget = pq.read_table(tmp_path / "shards" / "forget")
    assert forget.column("answer_variants").null_count == forget.num_rows
    manifest = load_manifest(tmp_path / "shards")
    assert manifest["schema"]["answer_variants"] == "string" and manifest["format_version"] == 2
