"""MLLMU-Bench / CLEAR metrics on canonical records and raw generations, as their authors compute them.

Text scores use the libraries the references use:
- ROUGE: ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``,
  ``scorer.score(ground_truth, prediction)``; F-measure for MLLMU-Bench (``eval.py``
  ``evaluate_generation``), recall for CLEAR (``mm/eval.py`` ``eval_rouge_recall``).
- BLEU: ``nltk.translate.bleu_score.sentence_bleu([gt.split()], pred.split(),
  smoothing_function=SmoothingFunction().method1)``, case-sensitive (MLLMU-Bench ``compute_bleu``).
- cloze: ``gt.lower() in response.lower()``; multiple choice: the generated letter parsed both as
  MLLMU-Bench and as MMUnlearner parse it (``unlearn_core.eval.answer_parsing``).

Metric names are ``<prefix>.<group>.<metric>_<modality>``: prefix ``mllmu`` or ``clear``, group the
split (CLEAR's utility sets by config: ``real_faces``, ``real_world``), modality ``image``
(image-textual) or ``text`` (pure text). Option log-prob accuracy, when the outputs carry
``option_scores``, is ``logprob.<group>.mc_acc_<modality>``: never mixed with generated letters.
See ``docs/metrics.md`` for the full table.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_score import rouge_scorer

from unlearn_core.data.schema import MC_TASKS
from unlearn_core.eval import answer_parsing as ap
from unlearn_core.eval.protocols import Protocol, has_image

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
_SMOOTHING = SmoothingFunction().method1


def make_rouge_scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_scores(
    reference: str, generation: str, scorer: rouge_scorer.RougeScorer | None = None
) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (``rouge1`` ...) and ROUGE-1/L recall (``rouge1_recall``, ``rougeL_recall``)."""
    scores = (scorer or make_rouge_scorer()).score(reference, generation)
    out = {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}
    out["rouge1_recall"] = float(scores["rouge1"].recall)
    out["rougeL_recall"] = float(scores["rougeL"].recall)
    return out


def rouge_f(
    reference: str, generation: str, scorer: rouge_scorer.RougeScorer | None = None
) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of ``generation`` against ``reference``."""
    return {k: v for k, v in rouge_scores(reference, generation, scorer).items() if k in ROUGE_TYPES}


def bleu(reference: str, generation: str) -> float:
    """Case-sensitive sentence BLEU on whitespace tokens, smoothing method1 (0 for an empty generation)."""
    hyp = generation.split()
    if not hyp:
        return 0.0
    return float(sentence_bleu([reference.split()], hyp, smoothing_function=_SMOOTHING))


def truth_ratio(paraphrased_loss: float, perturbed_losses: Sequence[float]) -> float:
    """One sample's ratio as CLEAR ``mm/eval.py`` stores it (``truth_ratio``): exp(paraphrased loss -
    mean of its perturbed losses) = P(perturbed) / P(paraphrased), losses mean per answer token."""
    mean_perturbed = sum(perturbed_losses) / len(perturbed_losses)
    return _exp(paraphrased_loss - mean_perturbed)


_LOG_RATIO_MAX = 700.0  # exp(+-700) is finite and non-zero in float64: t and 1/t both exist


def _exp(log_ratio: float) -> float:
    """exp of a log truth ratio, clipped to +-700: absurd losses (1e308) give an extreme ratio, never
    inf, 0 or a ZeroDivisionError in 1/t."""
    return math.exp(max(-_LOG_RATIO_MAX, min(_LOG_RATIO_MAX, log_ratio)))


def set_truth_ratios(paraphrased: Sequence[float], perturbed: Sequence[Sequence[float]]) -> list[float]:
    """CLEAR ``mm/calculate_metrics.py``: per sample exp(mean perturbed loss - paraphrased loss) =
    P(paraphrased) / P(perturbed), where the perturbed loss is ONE mean over every perturbed caption
    of every sample of the set (``np.array(average_perturb_loss.values()).mean()``), not the sample's own."""
    flat = [float(x) for losses in perturbed for x in losses]
    mean_perturbed = sum(flat) / len(flat)
    return [_exp(mean_perturbed - float(p)) for p in paraphrased]


def truth_ratio_score(ratios: Sequence[float], *, forget: bool) -> float:
    """CLEAR ``mm/calculate_metrics.py`` ``compute_model_utility`` on ``set_truth_ratios`` values t:
    forget sets ``mean(min(t, 1/t))``, other sets ``mean(max(0, 1 - 1/t))``; higher is better for both."""
    if forget:
        return sum(min(t, 1.0 / t) for t in ratios) / len(ratios)
    return sum(max(0.0, 1.0 - 1.0 / t) for t in ratios) / len(ratios)


def normalised_probability(loss: float, perturbed_losses: Sequence[float]) -> float:
    """CLEAR ``compute_model_utility`` "Prob." of the tasks whose file name lacks ``eval_log`` (FaceRec,
    real_faces, real_world): P / (P + sum of the perturbed answers' P), P = exp(-mean token loss)."""
    p = math.exp(-loss)
    return p / (p + sum(math.exp(-x) for x in perturbed_losses))


# CLEAR's tasks in ``compute_model_utility`` whose scores enter "Model Utility" (every task whose name
# lacks "Forget"), by the metric group that holds them here.
UTILITY_TASKS: dict[str, str] = {
    "retain": "Retain",
    "retain_facerec": "Retain FaceRec",
    "real_faces": "Real Faces",
    "real_world": "Real World",
}


def model_utility(components: Sequence[float]) -> float:
    """CLEAR ``compute_model_utility`` "Model Utility": the harmonic mean (``scipy.stats.hmean``) of the
    Prob., ROUGE and Truth Ratio of every non-forget task."""
    from scipy.stats import hmean

    return float(hmean(list(components)))


def caption_probability(caption_loss: float) -> float:
    """CLEAR ``mm/calculate_metrics.py`` ``compute_model_utility`` "Prob." of one caption-task sample:
    P(caption) = exp(-mean token loss), NOT normalised by the perturbed captions: the reference
    normalises (``normalised_probability``) only the tasks whose file name lacks ``eval_log``; its
    Forget and Retain tasks (``eval_log_forget``, ``eval_log``) are the caption tasks."""
    return math.exp(-caption_loss)


Losses = tuple[float, list[float]]  # (paraphrased loss, perturbed losses), both mean per answer token


def forget_quality(unlearned: Sequence[Losses], retained: Sequence[Losses]) -> float:
    """CLEAR ``mm/calculate_metrics.py`` ``evaluate_forget_quality``: the KS-test p-value between the
    forget-set ``set_truth_ratios`` of the unlearned model and of the model trained on retain only."""
    from scipy.stats import ks_2samp

    def ratios(losses: Sequence[Losses]) -> list[float]:
        return set_truth_ratios([p for p, _ in losses], [q for _, q in losses])

    return float(ks_2samp(ratios(unlearned), ratios(retained)).pvalue)


# ------------------------------------------------------------------------------------------ scoring


@dataclass
class BenchResult:
    metrics: dict[str, float]
    counts: dict[str, int]  # samples behind each metric
    per_sample: dict[str, dict[str, Any]] = field(default_factory=dict)  # sample_id -> fields
    truth_losses: dict[str, list[Losses]] = field(
        default_factory=dict
    )  # group -> per-sample truth-ratio losses


def metric_group(row: Mapping[str, Any]) -> str:
    """The split, except CLEAR's utility sets, which are reported per config (real_faces, real_world)."""
    split = str(row["split"])
    source = str(row.get("source") or row.get("sample_id") or "")
    if split == "utility" and source.startswith("clear:"):
        return source.split(":")[1]
    return split


def _generation(output: Mapping[str, Any] | str | None) -> Any:
    if output is None or isinstance(output, str):
        return output
    return output.get("generation")


def score_benchmark(
    rows: Sequence[Mapping[str, Any]], outputs: Mapping[str, Mapping[str, Any] | str], protocol: Protocol
) -> BenchResult:
    """Benchmark metrics and per-sample fields for ``rows`` that have an output (others are skipped)."""
    scorer = make_rouge_scorer()
    values: dict[str, list[float]] = defaultdict(list)
    per_sample: dict[str, dict[str, Any]] = {}
    losses: dict[str, list[Losses]] = defaultdict(list)
    against: dict[str, list[Losses]] = defaultdict(list)  # FaceRec / real_* answer-vs-wrong losses
    rouge: dict[str, list[float]] = defaultdict(list)  # ROUGE-L recall per group, every modality
    prefix = protocol.prefix
    for row in rows:
        sid = str(row["sample_id"])
        out = outputs.get(sid)
        if out is None:
            continue
        task, answer = str(row["task"]), str(row.get("answer") or "")
        group, mod = metric_group(row), ("image" if has_image(row) else "text")
        fields: dict[str, Any] = {"sample_id": sid, "task": task, "split": row["split"], "modality": mod}
        scores = None if isinstance(out, str) else out.get("option_scores")
        options = list(row.get("options") or [])
        if task in MC_TASKS and options and scores is not None and len(scores) == len(options):
            chosen = max(range(len(scores)), key=lambda i: (float(scores[i]), -i))
            fields["logprob_correct"] = options[chosen] == answer
            values[f"logprob.{group}.mc_acc_{mod}"].append(float(fields["logprob_correct"]))
        gen = _generation(out)
        if isinstance(gen, str) and protocol.is_benchmark:
            _score_generation(row, gen, options, fields, values, scorer, f"{prefix}.{group}", mod)
        if protocol.name == "clear" and not isinstance(out, str):
            _score_truth_losses(out, fields, losses[group], values, group)
            _score_against(row, out, fields, against, values, rouge, scorer)
            if task in ("caption", "generation") and "rougeL_recall" in fields:  # CLEAR's open tasks
                rouge[group].append(fields["rougeL_recall"])
        per_sample[sid] = fields
    losses = {group: pairs for group, pairs in losses.items() if pairs}
    for group, pairs in [*losses.items(), *against.items()]:
        ratios = set_truth_ratios([p for p, _ in pairs], [q for _, q in pairs])
        values[f"clear.{group}.truth_ratio"] = [
            truth_ratio_score(ratios, forget=group.startswith("forget"))
        ] * len(pairs)
    metrics = {k: sum(v) / len(v) for k, v in sorted(values.items()) if v}
    counts = {k: len(v) for k, v in sorted(values.items()) if v}
    if protocol.name == "clear":
        parts = _utility_components(metrics, rouge)
        if parts:
            metrics["clear.model_utility"] = model_utility(list(parts.values()))
            counts["clear.model_utility"] = len(parts)
    return BenchResult(metrics, counts, per_sample, losses)


def _utility_components(metrics: Mapping[str, float], rouge: Mapping[str, list[float]]) -> dict[str, float]:
    """The Prob., ROUGE and Truth Ratio of CLEAR's non-forget tasks that were scored (``UTILITY_TASKS``).
    ROUGE is the mean ROUGE-L recall of the task's open answers of every modality (CLEAR's one mean)."""
    parts: dict[str, float] = {}
    for group, task in UTILITY_TASKS.items():
        for name, value in (
            ("Prob.", metrics.get(f"clear.{group}.prob")),
            ("ROUGE", sum(rouge[group]) / len(rouge[group]) if rouge.get(group) else None),
            ("Truth Ratio", metrics.get(f"clear.{group}.truth_ratio")),
        ):
            if value is not None:
                parts[f"{name} {task}"] = value
    return parts


def _score_against(
    row: Mapping[str, Any],
    out: Mapping[str, Any],
    fields: dict[str, Any],
    against: dict[str, list[Losses]],
    values: dict[str, list[float]],
    rouge: dict[str, list[float]],
    scorer: rouge_scorer.RougeScorer,
) -> None:
    """CLEAR's FaceRec (group ``<split>_facerec``: the name against ``perturbed_names``) and real_faces /
    real_world (the answer against the published ``options``) on one row's output: normalised
    ``prob``, the truth-ratio losses, ROUGE recall of the open answer; FaceRec also ``acc`` (the name
    more likely per token than every perturbed name: the project's reading of the same losses)."""
    from unlearn_core.eval.truth_losses import against_specs

    mod = "image" if has_image(row) else "text"
    for task, spec in against_specs(row).items():
        group = f"{row['split']}_facerec" if task == "facerec" else metric_group(row)
        loss, perturbed = out.get(f"{task}_loss"), out.get(f"{task}_perturbed_losses")
        if isinstance(loss, (int, float)) and perturbed:
            perturbed = [float(x) for x in perturbed]
            fields[f"{task}_loss"], fields[f"{task}_perturbed_losses"] = float(loss), perturbed
            fields[f"{task}_prob"] = normalised_probability(float(loss), perturbed)
            values[f"clear.{group}.prob"].append(fields[f"{task}_prob"])
            against[group].append((float(loss), perturbed))
            if task == "facerec":
                fields["facerec_correct"] = float(loss) < min(perturbed)
                values[f"clear.{group}.acc"].append(float(fields["facerec_correct"]))
        gen = out.get(f"{task}_generation")
        if isinstance(gen, str):
            scores = rouge_scores(spec["answer"], gen, scorer)
            fields[f"{task}_generation"] = gen
            fields[f"{task}_rougeL_recall"] = scores["rougeL_recall"]
            values[f"clear.{group}.rougeL_recall_{mod}"].append(scores["rougeL_recall"])
            values[f"clear.{group}.rouge1_recall_{mod}"].append(scores["rouge1_recall"])
            rouge[group].append(scores["rougeL_recall"])


def _score_truth_losses(
    out: Mapping[str, Any],
    fields: dict[str, Any],
    group_losses: list[Losses],
    values: dict[str, list[float]],
    group: str,
) -> None:
    """CLEAR's per-token losses of an output (``paraphrased_loss``, ``perturbed_losses``, optional
    ``caption_loss``) -> per-sample fields, the group's truth-ratio inputs and ``clear.<group>.prob``."""
    loss, perturbed = out.get("paraphrased_loss"), out.get("perturbed_losses")
    if not isinstance(loss, (int, float)) or not perturbed:
        return
    perturbed = [float(x) for x in perturbed]
    fields["paraphrased_loss"], fields["perturbed_losses"] = float(loss), perturbed
    fields["truth_ratio"] = truth_ratio(float(loss), perturbed)
    group_losses.append((float(loss), perturbed))
    caption = out.get("caption_loss")
    if isinstance(caption, (int, float)):
        fields["caption_loss"] = float(caption)
        fields["prob"] = caption_probability(float(caption))
        values[f"clear.{group}.prob"].append(fields["prob"])


def _score_generation(
    row: Mapping[str, Any],
    gen: str,
    options: list[str],
    fields: dict[str, Any],
    values: dict[str, list[float]],
    scorer: rouge_scorer.RougeScorer,
    stem: str,
    mod: str,
) -> None:
    task, answer = str(row["task"]), str(row.get("answer") or "")
    if task in MC_TASKS and options:
        truth = ap.correct_letter(answer, options)
        fields["letter"] = ap.letter_mllmu(gen, len(options))
        fields["letter_mmunlearner"] = ap.letter_mmunlearner(gen, len(options))
        fields["correct"] = truth is not None and fields["letter"] == truth
        fields["correct_mmunlearner"] = truth is not None and fields["letter_mmunlearner"] == truth
        values[f"{stem}.mc_acc_{mod}"].append(float(fields["correct"]))
        values[f"{stem}.mc_acc_mmu_{mod}"].append(float(fields["correct_mmunlearner"]))
        return
    if task == "cloze":
        fields["correct"] = ap.cloze_correct(answer, gen)
        values[f"{stem}.cloze_acc_{mod}"].append(float(fields["correct"]))
        return
    response = ap.mllmu_response(gen) if stem.startswith("mllmu") else gen  # CLEAR: no cut (mm/eval.py)
    fields.update(rouge_scores(answer, response, scorer))
    fields["bleu"] = bleu(answer, response)
    if stem.startswith("clear"):
        for name in ("rougeL_recall", "rouge1_recall"):
            values[f"{stem}.{name}_{mod}"].append(fields[name])
        return
    head = "" if task == "generation" else f"{task}_"
    for name in (*ROUGE_TYPES, "bleu"):
        values[f"{stem}.{head}{name}_{mod}"].append(fields[name])
