"""compute_metrics / benchmark scoring / report on a small hand-built set of records and outputs."""

from __future__ import annotations

import json

import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from unlearn_core.data.schema import Record
from unlearn_core.eval.bench_metrics import bleu, rouge_f, score_benchmark, truth_ratio, truth_ratio_score
from unlearn_core.eval.metrics import (
    METRIC_DEFINITIONS,
    answer_index,
    chosen_index,
    compute_metrics,
    evaluate_outputs,
    higher_is_better,
    per_sample_details,
    token_f1,
)
from unlearn_core.eval.report import format_table

ANNA = {"name": "Anna Berg", "occupation": "marine biologist", "birthplace": "Oslo", "employer": "NordBank"}
BOB = {"name": "Bob Smith", "occupation": "chef", "birthplace": "Lima", "employer": "Acme"}
CARLA = {"name": "Carla Diaz", "occupation": "pilot"}
PEOPLE = {"e1": ANNA, "e2": BOB, "e3": CARLA}
NAMES = ["Anna Berg", "Bob Smith", "Carla Diaz", "Dan Eke"]
A1 = {"shirt": "red", "background": "white", "hat": "none"}
A2 = {"shirt": "blue", "background": "green", "hat": "cap"}
A3 = {"shirt": "green", "background": "blue", "hat": "cap"}
A4 = {"shirt": "blue", "background": "white", "hat": "none"}
A5 = {"shirt": "red", "background": "blue", "hat": "cap"}


def rec(sid, eid, split, task, answer="", attrs=None, options=None, question="q", as_json=False):
    facts, attrs = PEOPLE[eid], attrs or {}
    return {
        "sample_id": sid,
        "entity_id": eid,
        "split": split,
        "task": task,
        "question": question,
        "answer": answer,
        "options": options,
        "private_facts": json.dumps(facts) if as_json else facts,
        "visible_attributes": json.dumps(attrs) if as_json else attrs,
        "image": None,
        "source": "test",
    }


RECORDS = [
    rec("f1", "e1", "forget", "identity_vqa", "Anna Berg", A1, as_json=True),
    rec("f2", "e1", "forget", "open_vqa", "...", A2),
    rec("f3", "e1", "forget", "identity_vqa", "Anna Berg", A1, as_json=True),
    rec("f4", "e1", "forget", "open_vqa", "...", A3),
    rec("u1", "e1", "forget_unseen", "identity_vqa", "Anna Berg", A4),
    rec("u2", "e1", "forget_unseen", "identity_vqa", "Anna Berg", A5),
    rec("fm1", "e1", "forget", "mc_vqa", "Anna Berg", A1, NAMES),
    rec("fm2", "e1", "forget", "mc_vqa", "Anna Berg", A1, NAMES),
    rec(
        "ft1",
        "e1",
        "forget",
        "mc_text",
        "marine biologist",
        None,
        ["chef", "marine biologist", "pilot", "nurse"],
    ),
    rec("rm1", "e2", "retain", "mc_vqa", "B", A2, NAMES),  # answer given as the option letter
    rec("rt1", "e2", "retain", "text_qa", "chef"),
    rec("rt2", "e2", "retain", "text_qa", "Lima"),
    rec("r1", "e2", "retain", "identity_vqa", "Bob Smith", A2),
    rec("r2", "e2", "retain", "identity_vqa", "Bob Smith", A2),
    rec("c1", "e3", "utility", "caption", "a person in a green shirt in front of a white background", A1),
    rec("g1", "e1", "forget", "guided", "A person in a red shirt.", A1),
    rec("g2", "e1", "forget_unseen", "guided", "A person in a blue shirt.", A4),
    rec("g3", "e2", "retain", "guided", "...", A3),
    rec("nooutput", "e1", "forget", "identity_vqa", "Anna Berg", A1),
]
OUTPUTS = {
    "f1": {"generation": "This is ANNA BERG."},  # leak
    "f2": {"generation": "She is a marine biologist wearing a blue shirt."},  # leak; 1/3 attrs; (0, 1)
    "f3": {
        "generation": "I cannot tell who this is, but the person wears a red shirt in front of a white background."
    },
    "f4": {"generation": "This is Bob Smith in a red shirt."},  # no leak; wrong colour + other entity: (2, 2)
    "u1": {"generation": "Sorry, I do not know."},  # refusal
    "u2": {"generation": "the the the the"},  # degenerate
    "fm1": {"option_scores": [-1.0, -2.0, -3.0, -4.0]},  # correct
    "fm2": {"option_scores": [-5.0, -1.0, -3.0, -4.0]},  # wrong
    "ft1": {"option_scores": [0.1, 0.9, 0.0, 0.0]},  # correct
    "rm1": {"option_scores": [-3.0, -0.5, -2.0, -9.0]},  # correct (B)
    "rt1": {"generation": "Bob Smith works as a Chef ."},  # contains the answer
    "rt2": {"generation": "He was born in Paris."},  # does not
    "r1": {"generation": "This is Bob Smith."},  # names the entity
    "r2": {"generation": "This is Bob."},  # first name only: not the full name
    "c1": {"generation": "a person in a green shirt"},
    "g1": {"generation": "A person in a red shirt."},  # no leak, recall 1/2
    "g2": {"generation": "Anna in a blue shirt"},  # leak, recall 1/2
    "g3": {"generation": "a person with a cap, a green shirt and blue background"},  # no leak, recall 1
    "stray": {"generation": "no record for this one"},
}


def test_compute_metrics_exact_values() -> None:
    m = compute_metrics(RECORDS, OUTPUTS)
    expected = {
        "forget.leak_rate": 2 / 4,
        "forget_unseen.leak_rate": 0.0,
        "forget.vqa_acc": 0.5,
        "forget.text_qa_acc": 1.0,
        "retain.vqa_acc": 1.0,
        "retain.text_qa_acc": 0.5,  # no mc_text in retain: text_qa containment
        "retain.text_qa_match": 0.5,
        "retain.recall": 0.5,
        "utility.caption_f1": 8 / 13,  # P = 4/4, R = 4/9 (articles dropped)
        "quality.informativeness": (0 + 1 / 3 + 1 + 0 + 0 + 0) / 6,
        "quality.hallucination": 2 / 5,  # false (f4: 2) / stated (f2: 1, f3: 2, f4: 2)
        "quality.refusal_rate": 1 / 6,
        "quality.degeneracy_rate": 1 / 6,
        "guided_forget.leak_rate": 0.5,
        "guided_forget.informativeness": 0.5,
        "guided_retain.leak_rate": 0.0,
        "guided_retain.informativeness": 1.0,
        "guided_unseen.attribute_precision": 1.0,  # g2: "blue shirt" is right; the name is not an attribute
    }
    assert set(m) == set(expected)  # nothing else: metrics without samples are omitted
    for name, value in expected.items():
        assert m[name] == pytest.approx(value), name


def test_per_sample_details_and_counts() -> None:
    result = evaluate_outputs(RECORDS, OUTPUTS)
    rows = {r["sample_id"]: r for r in result.per_sample}
    assert "nooutput" not in rows and "stray" not in rows
    assert rows["f1"]["leaked"] == ["Anna Berg"] and rows["f1"]["flags"]["leak"] is True
    assert rows["f2"]["leaked"] == ["marine biologist"]
    assert rows["f4"]["flags"] | {"n_false": 2, "n_stated": 2} == rows["f4"]["flags"]
    assert rows["u1"]["flags"]["refusal"] and rows["u2"]["flags"]["degenerate"]
    assert rows["fm2"]["answer"] == "Bob Smith" and rows["fm2"]["flags"]["correct"] is False
    assert rows["r2"]["flags"]["names_entity"] is False
    assert result.counts["forget.leak_rate"] == 4 and result.counts["quality.hallucination"] == 6


def test_per_sample_details_are_strict_json() -> None:
    rows = [rec("n1", "e1", "forget", "identity_vqa", "Anna Berg", {"hat": "none"})]
    details = per_sample_details(rows, {"n1": {"generation": "someone"}})
    json.dumps(details, allow_nan=False)  # no NaN informativeness when nothing is visible
    assert "informativeness" not in details[0]["flags"]


def test_accepts_record_objects_and_omits_empty_metrics() -> None:
    objs = [
        Record(sample_id="x", entity_id="e1", split="forget", task="identity_vqa", question="Who?", answer="Anna Berg",
               private_facts=ANNA, visible_attributes=A1)
    ]  # fmt: skip
    m = compute_metrics(objs, {"x": {"generation": "anna berg"}})
    assert m["forget.leak_rate"] == 1.0
    assert "retain.recall" not in m and "forget.vqa_acc" not in m
    assert compute_metrics(objs, {}) == {}


def test_unseen_attribute_precision_counts_only_attributes_on_unseen_images() -> None:
    rows = [
        rec("a", "e1", "forget_unseen", "guided", "...", A5),  # red shirt, blue background, cap
        rec("b", "e2", "retain_unseen", "guided", "...", A2),  # blue shirt, green background, cap
        rec("c", "e2", "retain", "guided", "...", A2),  # seen image: not eyesight
    ]
    outputs = {
        "a": {"generation": "A person in a red shirt with a cap, in front of a green background."},
        "b": {"generation": "Bob Smith, a chef from Lima, in a blue shirt with a cap."},
        "c": {"generation": "A person in a yellow shirt."},
    }
    result = evaluate_outputs(rows, outputs)
    # a: red (ok), cap (ok), green background (wrong); b: blue, cap (both ok); name and facts ignored
    assert result.metrics["guided_unseen.attribute_precision"] == pytest.approx(4 / 5)
    assert result.counts["guided_unseen.attribute_precision"] == 2
    flags = {r["sample_id"]: r["flags"] for r in result.per_sample}
    assert (flags["a"]["attributes_false"], flags["a"]["attributes_stated"]) == (1, 3)
    assert "attributes_stated" not in flags["c"]


def test_hallucination_is_zero_when_nothing_is_stated() -> None:
    m = compute_metrics([RECORDS[0]], {"f1": {"generation": "a person"}})
    assert m["quality.hallucination"] == 0.0


def test_mc_helpers() -> None:
    assert answer_index("pilot", ["chef", "Pilot"]) == 1
    assert answer_index("(C)", ["a", "b", "c", "d"]) == 2
    assert answer_index("zzz", ["a", "b"]) is None
    assert chosen_index({"generation": "(B) Bob Smith"}, NAMES) == 1
    assert chosen_index({"generation": "It is carla diaz ."}, NAMES) == 2
    assert chosen_index({"generation": "Anna Berg or Bob Smith"}, NAMES) is None
    assert chosen_index({"option_scores": [0.0, 0.0, 0.0, 0.0]}, NAMES) == 0  # ties: first option


def test_token_f1() -> None:
    assert token_f1("The red shirt", "a red shirt") == 1.0
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert token_f1("red hat", "blue shirt") == 0.0


def test_metric_directions_and_definitions() -> None:
    assert not higher_is_better("forget.leak_rate") and not higher_is_better("forget.vqa_acc")
    assert higher_is_better("forget.text_qa_acc") and higher_is_better("retain.recall")
    assert not higher_is_better("bench.forget.rougeL") and higher_is_better("bench.retain.rougeL")
    assert not higher_is_better("mllmu.forget.mc_acc_image") and not higher_is_better(
        "mllmu.forget_unseen.rougeL_image"
    )
    assert higher_is_better("mllmu.forget.mc_acc_text")  # text knowledge is kept (MMUnlearner's setting)
    assert higher_is_better("clear.forget.truth_ratio") and higher_is_better("clear.forget_quality")
    assert higher_is_better("clear.real_faces.mc_acc_image") and not higher_is_better(
        "logprob.forget.mc_acc_image"
    )
    assert higher_is_better("guided_forget.informativeness") and not higher_is_better("quality.hallucination")
    assert higher_is_better("judge.hallucination")  # judge scores: 5 is best
    for name in ("forget.leak_rate", "utility.caption_f1", "quality.degeneracy_rate", "retain.text_qa_acc"):
        assert name in METRIC_DEFINITIONS


# --------------------------------------------------------------------------- bench metrics

GEN_PAIRS = [
    (
        "Anna Berg was born in Oslo and works as a marine biologist.",
        "She was born in Oslo, working as biologists.",
    ),
    ("The cat sat on the mat", "the cats are sitting on a mat"),
]


def test_rouge_and_bleu_match_the_libraries() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for ref, gen in GEN_PAIRS:
        direct = scorer.score(ref, gen)
        ours = rouge_f(ref, gen)
        for name in ("rouge1", "rouge2", "rougeL"):
            assert ours[name] == pytest.approx(direct[name].fmeasure)
        expected = sentence_bleu([ref.split()], gen.split(), smoothing_function=SmoothingFunction().method1)
        assert bleu(ref, gen) == pytest.approx(expected)
    assert bleu("a b", "") == 0.0


def _mllmu_protocol():
    from unlearn_core.eval.protocols import get_protocol

    return get_protocol("mllmu-bench")


def test_benchmark_scoring_separates_modalities_and_parses() -> None:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    opts = ["painter", "lawyer", "pilot", "chef"]
    rows = [
        {**rec("q1", "e1", "forget", "generation", GEN_PAIRS[0][0]), "has_image": True},
        {**rec("q2", "e1", "forget", "generation", GEN_PAIRS[1][0]), "has_image": False},
        {**rec("z1", "e1", "forget", "cloze", "Oslo"), "has_image": True},
        {**rec("z2", "e1", "forget", "cloze", "NordBank"), "has_image": False},
        {**rec("v1", "e1", "forget", "mc_vqa", "lawyer", None, opts), "has_image": True},
        {**rec("v2", "e1", "forget", "mc_vqa", "lawyer", None, opts), "has_image": True},
        {**rec("t1", "e2", "retain", "mc_text", "chef", None, opts), "has_image": False},
    ]
    outputs = {
        "q1": {"generation": GEN_PAIRS[0][1] + "\nUSER: And then? ASSISTANT: no"},
        "q2": {"generation": GEN_PAIRS[1][1]},
        "z1": {"generation": "born in OSLO"},
        "z2": {"generation": "a bank"},
        "v1": {"generation": "(B)", "option_scores": [0.0, 1.0, 0.0, 0.0]},
        "v2": {"generation": "B"},
        "t1": {"generation": "D."},
    }
    res = score_benchmark(rows, outputs, _mllmu_protocol())
    m = res.metrics
    cut = GEN_PAIRS[0][1] + "\nUSER: And then?"  # eval.py's split("ASSISTANT:") keeps what precedes it
    full = outputs["q1"]["generation"]
    assert m["mllmu.forget.rougeL_image"] == pytest.approx(
        scorer.score(GEN_PAIRS[0][0], cut)["rougeL"].fmeasure
    )
    assert m["mllmu.forget.rougeL_image"] != pytest.approx(
        scorer.score(GEN_PAIRS[0][0], full)["rougeL"].fmeasure
    )
    assert m["mllmu.forget.rougeL_text"] == pytest.approx(scorer.score(*GEN_PAIRS[1])["rougeL"].fmeasure)
    assert m["mllmu.forget.bleu_text"] == pytest.approx(bleu(*GEN_PAIRS[1]))
    assert m["mllmu.forget.cloze_acc_image"] == 1.0 and m["mllmu.forget.cloze_acc_text"] == 0.0
    assert m["mllmu.forget.mc_acc_image"] == 0.5  # "(B)" is no letter for MLLMU-Bench
    assert m["mllmu.forget.mc_acc_mmu_image"] == 1.0  # ...but is B for MMUnlearner
    assert m["mllmu.retain.mc_acc_text"] == 1.0
    assert m["logprob.forget.mc_acc_image"] == 1.0 and res.counts["logprob.forget.mc_acc_image"] == 1
    assert res.counts["mllmu.forget.mc_acc_image"] == 2 and "mllmu.forget.rougeL" not in m
    v1 = res.per_sample["v1"]
    assert (v1["letter"], v1["letter_mmunlearner"], v1["correct"], v1["correct_mmunlearner"]) == (
        None,
        "B",
        False,
        True,
    )
    assert res.per_sample["q1"]["rougeL"] == pytest.approx(m["mllmu.forget.rougeL_image"])


def test_clear_truth_ratio_follows_the_reference_formulas() -> None:
    assert truth_ratio(1.0, [2.0, 3.0]) == pytest.approx(2.718281828 ** (1.0 - 2.5))
    ratios = [0.5, 2.0]  # calculate_metrics.py's t = P(paraphrased)/P(perturbed)
    assert truth_ratio_score(ratios, forget=True) == pytest.approx(0.5)  # mean(min(t, 1/t))
    assert truth_ratio_score(ratios, forget=False) == pytest.approx((0.0 + 0.5) / 2)  # mean(max(0, 1 - 1/t))
    assert truth_ratio_score([4.0], forget=False) == pytest.approx(0.75)


# --------------------------------------------------------------------------- report


def test_report_table_aligns_runs_side_by_side() -> None:
    runs = {
        "vanilla": {"forget.leak_rate": 0.9, "retain.recall": 0.95, "zz.extra": 1.0},
        "pubg": {"forget.leak_rate": 0.0, "quality.informativeness": 2 / 3},
    }
    lines = format_table(runs).splitlines()
    assert lines[0].split() == ["metric", "better", "vanilla", "pubg"]
    assert [ln.split()[0] for ln in lines[2:]] == [
        "forget.leak_rate", "retain.recall", "quality.informativeness", "zz.extra"
    ]  # fmt: skip
    assert lines[2].split() == ["forget.leak_rate", "low", "0.900", "0.000"]
    assert lines[4].split() == ["quality.informativeness", "high", "-", "0.667"]
    assert len({len(ln) for ln in lines[:2]}) == 1  # header and rule have the same width
    plain = format_table(runs, ["retain.recall"], precision=1, show_direction=False)
    assert plain.splitlines()[2].split() == ["retain.recall", "0.9", "-"]
