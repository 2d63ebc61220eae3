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
    variants = json.loads(mc["answer_variants"])
    assert variants["perturbed"] == ["A dog on a sofa.", "A red car."]
    assert variants["facerec"] == {  # CLEAR's FaceRec: the name against perturbed_names as published
        "question": "The name of the person on the image is ",
        "answer": "Ann Smith",
        "perturbed": ["Zed Quinn", "Yul Ray", "Xia Sol"],
    }
    real = {
        r["sample_id"].split(":")[1]: json.loads(r["answer_variants"])["open"]
        for r in pq.read_table(tmp_path / "shards" / "utility").to_pylist()
    }
    assert real["real_faces"]["perturbed"] == ["Other One", "Other Two", "Other Three"]
    assert real["real_world"] == {  # the published options, the answer among them
        "question": "What color is the square?",
        "answer": "green",
        "perturbed": ["red", "green", "blue", "black"],
    }
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
    # FaceRec, real_faces / real_world and Model Utility (calculate_metrics.py), from the per-sample rows
    for group in ("forget_facerec", "retain_facerec", "real_faces", "real_world"):
        task = "facerec" if group.endswith("facerec") else "open"
        (row,) = [
            r
            for r in report["per_sample"]
            if f"{task}_loss" in r and (group.startswith(r["split"]) or r["sample_id"].split(":")[1] == group)
        ]
        p = math.exp(-row[f"{task}_loss"])
        assert m[f"clear.{group}.prob"] == pytest.approx(
            p / (p + sum(math.exp(-x) for x in row[f"{task}_perturbed_losses"]))
        )
        ratios = set_truth_ratios([row[f"{task}_loss"]], [row[f"{task}_perturbed_losses"]])
        assert m[f"clear.{group}.truth_ratio"] == pytest.approx(
            truth_ratio_score(ratios, forget=group.startswith("forget"))
        )
        assert m[f"clear.{group}.rougeL_recall_image"] == pytest.approx(row[f"{task}_rougeL_recall"])
    assert m["clear.forget_facerec.acc"] in (0.0, 1.0)
    components = [
        m[f"clear.{g}.{k}"]
        for g in ("retain", "retain_facerec", "real_faces", "real_world")
        for k in ("prob", "rougeL_recall_image", "truth_ratio")
    ]
    hmean = 0.0 if min(components) == 0 else len(components) / sum(1 / c for c in components)
    assert m["clear.model_utility"] == pytest.approx(hmean) and report["counts"]["clear.model_utility"] == 12

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
        "clear.forget_facerec.prob",
        "clear.retain_facerec.truth_ratio",
        "clear.real_faces.prob",
        "clear.real_world.rougeL_recall_image",
        "clear.model_utility",
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


# ---- CLEAR's FaceRec and real_* tasks, and its Model Utility ---------------------------------------
def _against_row(sid: str, split: str, task: str, answer: str, perturbed: list[str], question: str) -> dict:
    """A converted CLEAR row carrying one answer-against-wrong-ones task in ``answer_variants``."""
    return {
        "sample_id": sid,
        "split": split,
        "task": "mc_vqa",
        "answer": answer,
        "options": sorted({answer, *perturbed}),
        "has_image": True,
        "answer_variants": json.dumps(
            {task: {"question": question, "answer": answer, "perturbed": perturbed}}
        ),
    }


FACE = "The name of the person on the image is "


def test_facerec_and_real_tasks_score_as_calculate_metrics_does() -> None:
    """By hand from ``compute_model_utility``: "Prob." of the tasks without ``eval_log`` in their file
    name is P / (P + sum P(perturbed)); the truth ratio uses the task's set-mean perturbed loss; the
    forget FaceRec task takes min(t, 1/t), the others max(0, 1 - 1/t); ROUGE is the mean ROUGE-L recall
    of the open answer; Model Utility is the harmonic mean of every non-forget Prob. / ROUGE / Truth Ratio."""
    rows = [
        _against_row(
            "clear:forget10_perturbed:0", "forget", "facerec", "Ann Smith", ["Zed Quinn", "Yul Ray"], FACE
        ),
        _against_row(
            "clear:retain_perturbed:0", "retain", "facerec", "Bob Jones", ["Zed Quinn", "Yul Ray"], FACE
        ),
        _against_row(
            "clear:retain_perturbed:1", "retain", "facerec", "Cat Lee", ["Zed Quinn", "Yul Ray"], FACE
        ),
        _against_row(
            "clear:real_faces:0", "utility", "open", "Famous Person", ["Other One", "Other Two"], FACE
        ),
        _against_row(
            "clear:real_world:0", "utility", "open", "green", ["red", "green", "blue"], "Which color?"
        ),
    ]
    outputs = {
        "clear:forget10_perturbed:0": {"facerec_loss": 2.0, "facerec_perturbed_losses": [1.0, 3.0]},
        "clear:retain_perturbed:0": {
            "facerec_loss": 0.5,
            "facerec_perturbed_losses": [2.0, 2.0],
            "facerec_generation": "Bob Jones",
        },
        "clear:retain_perturbed:1": {
            "facerec_loss": 1.5,
            "facerec_perturbed_losses": [1.0, 2.0],
            "facerec_generation": "Lee",
        },
        "clear:real_faces:0": {
            "open_loss": 1.0,
            "open_perturbed_losses": [2.0, 3.0],
            "open_generation": "a famous actor smiling",
        },
        "clear:real_world:0": {
            "open_loss": 0.2,
            "open_perturbed_losses": [1.0, 0.2, 1.0],  # the answer is among the published options
            "open_generation": "it is green",
        },
    }
    # retain caption task (Retain): prob / truth ratio / ROUGE from its own rows
    caption = {
        "sample_id": "clear:retain_perturbed:9",
        "split": "retain",
        "task": "caption",
        "answer": "a person in a blue coat",
        "options": None,
        "has_image": True,
    }
    rows.append(caption)
    outputs[caption["sample_id"]] = {
        "generation": "a person in a coat",
        "paraphrased_loss": 1.0,
        "perturbed_losses": [2.0],
        "caption_loss": 1.0,
    }
    m = score_benchmark(rows, outputs, CLEAR).metrics

    def prob(loss: float, perturbed: list[float]) -> float:
        return math.exp(-loss) / (math.exp(-loss) + sum(math.exp(-x) for x in perturbed))

    assert m["clear.forget_facerec.prob"] == pytest.approx(prob(2.0, [1.0, 3.0]))
    t_forget = math.exp((1.0 + 3.0) / 2 - 2.0)  # set mean perturbed 2.0
    assert m["clear.forget_facerec.truth_ratio"] == pytest.approx(min(t_forget, 1 / t_forget))
    assert m["clear.forget_facerec.acc"] == 0.0  # Zed Quinn (1.0) is likelier than the name (2.0)
    retain_prob = (prob(0.5, [2.0, 2.0]) + prob(1.5, [1.0, 2.0])) / 2
    assert m["clear.retain_facerec.prob"] == pytest.approx(retain_prob)
    mean_perturbed = (2 + 2 + 1 + 2) / 4  # 1.75: one mean over the task
    t = [math.exp(mean_perturbed - 0.5), math.exp(mean_perturbed - 1.5)]
    retain_tr = sum(max(0.0, 1 - 1 / x) for x in t) / 2
    assert m["clear.retain_facerec.truth_ratio"] == pytest.approx(retain_tr)
    assert m["clear.retain_facerec.acc"] == 0.5
    # ROUGE-L recall (stemmer): "Bob Jones" fully recalled, "Lee" 1 of "Cat Lee"'s 2 tokens
    assert m["clear.retain_facerec.rougeL_recall_image"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["clear.real_faces.prob"] == pytest.approx(prob(1.0, [2.0, 3.0]))
    t_faces = math.exp(2.5 - 1.0)
    assert m["clear.real_faces.truth_ratio"] == pytest.approx(1 - 1 / t_faces)
    assert m["clear.real_faces.rougeL_recall_image"] == pytest.approx(0.5)  # "famous" of "Famous Person"
    # real_world: the published options hold the answer, so its P counts twice, as in the reference
    assert m["clear.real_world.prob"] == pytest.approx(
        math.exp(-0.2) / (2 * math.exp(-0.2) + 2 * math.exp(-1.0))
    )
    t_world = math.exp((1.0 + 0.2 + 1.0) / 3 - 0.2)
    assert m["clear.real_world.truth_ratio"] == pytest.approx(1 - 1 / t_world)
    assert m["clear.real_world.rougeL_recall_image"] == pytest.approx(1.0)
    # "a person in a coat": 5 of "a person in a blue coat"'s 6 tokens
    retain_caption = {"prob": math.exp(-1.0), "rouge": 5 / 6, "tr": 1 - 1 / math.exp(1.0)}
    components = [
        retain_caption["prob"], retain_caption["rouge"], retain_caption["tr"],
        retain_prob, (1.0 + 0.5) / 2, retain_tr,
        prob(1.0, [2.0, 3.0]), 0.5, 1 - 1 / t_faces,
        m["clear.real_world.prob"], 1.0, 1 - 1 / t_world,
    ]  # fmt: skip
    assert m["clear.model_utility"] == pytest.approx(len(components) / sum(1 / c for c in components))
    assert score_benchmark(rows, outputs, CLEAR).counts["clear.model_utility"] == 12
    # a zero component makes the harmonic mean 0 (scipy's hmean, as the reference)
    outputs["clear:real_world:0"]["open_generation"] = "no idea"
    assert score_benchmark(rows, outputs, CLEAR).metrics["clear.model_utility"] == 0.0


def test_facerec_and_real_losses_are_computed_on_clears_own_question() -> None:
    """The runner computes a FaceRec row's name / perturbed-name losses and open answer on CLEAR's face
    question ("The name of the person on the image is "), not on the lettered multiple-choice one."""
    torch.manual_seed(0)
    row = {
        **_against_row("clear:retain_perturbed:0", "retain", "facerec", "Bob Jones", ["Zed Quinn"], FACE),
        "entity_id": "clear:Bob Jones",
        "question": "Who is this person?",
        "image": np.zeros((32, 32, 3), dtype=np.uint8),
    }
    tok = train_word_tokenizer([FACE, "Who is this person?", "Bob Jones Zed Quinn A B Just give ONE letter"])
    model, proc = build_tiny_llava(
        tok, image_size=32, patch_size=16, hidden=32, vision_layers=1, text_layers=1
    )
    out = model_outputs(model, proc, [row], protocol=CLEAR, max_new_tokens=3)[row["sample_id"]]
    expected = answer_mean_nll(model, proc, FACE, row["image"], ["Bob Jones", "Zed Quinn"])
    assert [out["facerec_loss"], *out["facerec_perturbed_losses"]] == pytest.approx(expected)
    asked_otherwise = answer_mean_nll(model, proc, "Who is this person?", row["image"], ["Bob Jones"])
    assert out["facerec_loss"] != pytest.approx(asked_otherwise[0])
    assert isinstance(out["facerec_generation"], str) and isinstance(out["generation"], str)
