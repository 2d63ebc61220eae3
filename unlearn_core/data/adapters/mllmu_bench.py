"""MLLMU-Bench (HF ``MLLMMU/MLLMU-Bench``) -> canonical records.

Source: the dataset folder as downloaded from the hub, one subfolder per config holding parquet
files (``forget_5/train-00000-of-00001.parquet``, ``Test_Set/train-0000{0,1}-of-00002.parquet``...).
Profile configs have columns ``image`` {bytes, path}, ``ID``, ``biography`` (JSON text), ``question``,
``answer``, ``Classification_Task`` {``Image_Textual_Questions``, ``Pure_Text_Questions``: lists of
{Question, Options{A..D}, Correct_Answer (a letter)}}, ``Generation_Task`` and ``Mask_Task`` (lists of
{Question, Ground_Truth, Type: "Image_Textual" | "Pure_Text"}); ``Test_Set`` rows carry ``images`` (a
list of {bytes, path}: other photos of the person) instead of ``image``. The training data
(``ft_Data`` config, also published as ``MLLMMU/baseline_train_split``) has ``image, ID, metadata``
(JSON list of {Question, Answer}).

Question families -> tasks (one record per question):
  top-level question/answer (when both set) -> open_vqa, with the image
  Image_Textual_Questions -> mc_vqa (options = the A, B, C, D texts; answer = the correct option's text)
  Pure_Text_Questions -> mc_text (no image)
  Generation_Task -> generation, Mask_Task -> cloze (image when Type is Image_Textual, none for Pure_Text)

Configs -> splits (decisions):
  forget_N (``forget_config``; default: the only forget_N present, else forget_5) -> forget;
    retain_{100-N} -> retain. The other percentages overlap these and are skipped (listed in the
    report). When forget_N / retain_N hold training rows (``image, ID, metadata``: the
    ``baseline_train_split`` layout), their rows become fact_vqa records of that split.
  Test_Set -> forget_unseen for the people of the chosen forget config, retain_unseen for everyone
    else (all Test_Set people are fictitious, so the rest are retain people). As the reference ``eval.py``
    does (``random.choice(row["images"])`` once per person and task), every image question of one
    task family (classification, cloze, generation, the profile question) of a person gets the same
    one of the person's photos, chosen by a generator seeded with ``TEST_PHOTO_SEED``, the person and
    the family. Text-only questions are kept too. Skipped when there is no forget config to tell the
    two apart. Facts come from the profile configs of the same ID when a row has no ``biography``.
  Full_Set (all fictitious people = forget_N + retain_{100-N}) -> skipped when the retain config is
    present; otherwise its people outside the forget config become the retain split.
  Retain_Set (real celebrities) -> utility, entity ids ``mllmu-real:<ID>`` (never forget/retain).
  ft_Data / baseline_train_split -> fact_vqa with the image; split forget when the ID is in the chosen
    forget config, retain otherwise; skipped without a forget config. A folder with the columns
    image, ID, metadata is recognised as training data whatever its name.

private_facts: the biography JSON object, keys lower-cased snake_case (so the name is under "name");
training rows take the biography of the same ID from the profile configs. ``biography`` is optional in
every profile config (the reference ``eval.py`` never reads it): a row without one takes the facts of
the same ID from a profile config read before it (forget_N, retain_N, Full_Set, Test_Set, in that
order), else none; the report counts the rows left without facts (``without_facts``), whose records
the project's leak checks cannot match. Entity ids are
``mllmu:<ID>``; sample ids ``mllmu:<config>:<ID>:<task>:<k>``; source ``mllmu-bench:<config>``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from unlearn_core.bounded import load_json_text
from unlearn_core.data.adapters import (
    ConfigCounts,
    Conversion,
    ConvertReport,
    SourceConfig,
    discover_configs,
    iter_parquet_rows,
)
from unlearn_core.data.schema import RecordError

FORMAT = "mllmu-bench"
DEFAULT_FORGET_CONFIG = "forget_5"
TEST_PHOTO_SEED = 0
TEST_CONFIG = "Test_Set"
FULL_CONFIG = "Full_Set"
CELEBRITY_CONFIG = "Retain_Set"
TRAIN_CONFIGS = ("ft_Data", "baseline_train_split")
TRAIN_COLUMNS = frozenset({"image", "ID", "metadata"})
IMAGE_TYPE, TEXT_TYPE = "Image_Textual", "Pure_Text"
_FORGET_RE = re.compile(r"^forget_(\d+)$")
_RETAIN_RE = re.compile(r"^retain_(\d+)$")
_LETTER_RE = re.compile(r"^\(?([A-Z])(?:[).:].*|\))?$", re.DOTALL)

Candidate = tuple[str, dict[str, Any] | None, str | None]  # (origin suffix, row, reject reason)


@dataclass
class _Plan:
    forget: str | None
    retain: str | None
    train: str | None
    train_layout: set[str] = field(default_factory=set)  # forget/retain configs holding training rows
    forget_ids: set[str] = field(default_factory=set)
    facts_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)


def convert(source: Path, out: Path, *, forget_config: str | None = None) -> ConvertReport:
    """Convert an MLLMU-Bench folder into a records folder; see the module docstring for the mapping."""
    source, out = Path(source), Path(out)
    configs = discover_configs(source, example=f"{DEFAULT_FORGET_CONFIG}/train-*.parquet")
    if forget_config is None:
        present = [n for n in configs if _FORGET_RE.match(n)]
        forget_config = present[0] if len(present) == 1 else DEFAULT_FORGET_CONFIG
    match = _FORGET_RE.match(forget_config)
    if not match:
        raise RecordError(f"forget_config must look like 'forget_5', got {forget_config!r}")
    retain_config = f"retain_{100 - int(match.group(1))}"
    conv = Conversion(FORMAT, source, out)
    plan = _make_plan(configs, forget_config, retain_config, conv)
    for name in _order(configs, plan):
        _convert_config(configs[name], plan, conv)
    return conv.finish(f"{FORMAT}:{forget_config}")


def _make_plan(configs: Mapping[str, SourceConfig], forget: str, retain: str, conv: Conversion) -> _Plan:
    forgets = sorted(n for n in configs if _FORGET_RE.match(n))
    if forget not in configs and forgets:
        raise RecordError(
            f"forget config {forget!r} not found under {conv.source}; available: {', '.join(forgets)} "
            "(pass forget_config=...)"
        )
    trains = [n for n in configs if n in TRAIN_CONFIGS or _looks_like_training(configs[n])]
    plan = _Plan(
        forget=forget if forget in configs else None,
        retain=retain if retain in configs else None,
        train=trains[0] if trains else None,
    )
    plan.train_layout = {n for n in (forget, retain) if n in configs and _has_training_columns(configs[n])}
    for name in trains[1:]:
        conv.skip_config(name, f"same training data as {plan.train}")
    # Membership comes from the raw ID column, so a quarantined forget row cannot move its person
    # to the retain side of Test_Set or of the training data.
    if plan.forget is not None:
        plan.forget_ids = _ids_of(configs[plan.forget])
    for name in configs:
        if name in (forget, retain, TEST_CONFIG, FULL_CONFIG, CELEBRITY_CONFIG) or name in trains:
            continue
        if _FORGET_RE.match(name) or _RETAIN_RE.match(name):
            conv.skip_config(name, f"another forget/retain percentage; converting {forget} + {retain}")
        else:
            conv.warn(f"folder {name!r} matches no known MLLMU-Bench config; not converted")
    if plan.forget is None:
        conv.warn(f"no forget_N config under {conv.source}: no forget split")
    if plan.retain is None:
        conv.warn(
            f"{retain} not found"
            + (f"; retain people taken from {FULL_CONFIG}" if FULL_CONFIG in configs else "")
        )
    return plan


def _order(configs: Mapping[str, SourceConfig], plan: _Plan) -> list[str]:
    """Forget first (its IDs decide the other splits), then retain, the rest, training data last."""
    first = [plan.forget, plan.retain, FULL_CONFIG, TEST_CONFIG, CELEBRITY_CONFIG, plan.train]
    return [n for n in first if n is not None and n in configs]


def _convert_config(config: SourceConfig, plan: _Plan, conv: Conversion) -> None:
    name = config.name
    if name == FULL_CONFIG and plan.retain is not None:
        conv.skip_config(name, f"superset of {plan.forget} + {plan.retain}")
        return
    if name in (TEST_CONFIG, plan.train) and plan.forget is None:
        conv.skip_config(name, "needs a forget_N config to tell forget people from retain people")
        return
    role = {
        plan.forget: "forget",
        plan.retain: "retain",
        FULL_CONFIG: "retain (not in forget)",
        TEST_CONFIG: "forget_unseen/retain_unseen",
        CELEBRITY_CONFIG: "utility",
        plan.train: "forget/retain (fact_vqa)",
    }[name]
    if name in plan.train_layout:
        role = f"{role} (fact_vqa)"
    counts = conv.config(name, role)
    columns = config.columns()
    if name != plan.train and name not in plan.train_layout:
        for column, task in (
            ("Classification_Task", "mc_vqa/mc_text"),
            ("Generation_Task", "generation"),
            ("Mask_Task", "cloze"),
        ):
            if column not in columns:
                conv.warn(f"{name}: no {column} column, so no {task} records from it")
    for path in config.files:
        for index, row, bad in iter_parquet_rows(path):
            counts.source_rows += 1
            origin = config.origin(path, index)
            if bad:
                conv.reject(origin, f"{bad[0]}: not valid UTF-8 text in the source file", row)
                continue
            _convert_row(name, row, origin, plan, conv, counts)


def _convert_row(
    name: str, row: dict[str, Any], origin: str, plan: _Plan, conv: Conversion, counts: ConfigCounts
) -> None:
    training = name == plan.train or name in plan.train_layout
    required = ["ID", "metadata", "image"] if training else ["ID"]  # eval.py never reads biography
    missing = [c for c in required if c not in row]
    if not training and "image" not in row and "images" not in row:
        missing.append("images" if name == TEST_CONFIG else "image")
    if missing:
        conv.reject(origin, f"{missing[0]}: column missing from {origin.split('#')[0]}", row)
        return
    pid = _person_id(row["ID"])
    if pid is None:
        conv.reject(origin, f"ID: expected a non-empty str, got {row['ID']!r}", row)
        return
    split = _split_for(name, pid, plan)
    if split is None:
        counts.skipped_rows += 1
        return
    try:
        facts = _row_facts(name, row, pid, plan, training)
    except ValueError as exc:
        conv.reject(origin, f"biography: {exc}", row)
        return
    if not facts:
        counts.without_facts += 1
    entity = f"mllmu-real:{pid}" if name == CELEBRITY_CONFIG else f"mllmu:{pid}"
    base = {
        "entity_id": entity,
        "split": split,
        "private_facts": facts,
        "visible_attributes": {},
        "source": f"{FORMAT}:{name}",
    }
    photos = row.get("images")
    if photos is not None and not isinstance(photos, (list, tuple)):
        conv.reject(origin, f"images: expected a list of images, got {type(photos).__name__}", row)
        return
    image_for = _image_picker(row, pid)
    candidates = _training_candidates(row) if training else _profile_candidates(row)
    for suffix, cand, reason in candidates:
        where = f"{origin} {suffix}"
        if cand is None:
            conv.reject(where, reason or "row: unusable", row)
            continue
        if cand.pop("_needs_image"):
            cand["image"] = image_for(_PHOTO_FAMILY.get(cand["task"], cand["task"]))
        cand["sample_id"] = f"mllmu:{name}:{pid}:{cand['task']}:{cand.pop('_k')}"
        conv.add(where, {**base, **cand})


def _row_facts(name: str, row: Mapping[str, Any], pid: str, plan: _Plan, training: bool) -> dict[str, Any]:
    """A row's private facts: its biography, else (training rows, profile rows without one) those of the
    same fictitious person from a profile config read earlier, else none. Celebrities share IDs with
    fictitious people, so they never borrow. A row with a biography lends it to later rows."""
    biography = None if training else row.get("biography")
    if biography is None:
        return {} if name == CELEBRITY_CONFIG else plan.facts_by_id.get(pid, {})
    facts = _private_facts(biography)
    if name != CELEBRITY_CONFIG:
        plan.facts_by_id.setdefault(pid, facts)
    return facts


def _split_for(name: str, pid: str, plan: _Plan) -> str | None:
    if name == plan.forget:
        return "forget"
    if name == plan.retain:
        return "retain"
    if name == CELEBRITY_CONFIG:
        return "utility"
    if name == TEST_CONFIG:
        return "forget_unseen" if pid in plan.forget_ids else "retain_unseen"
    if name == FULL_CONFIG:
        return None if pid in plan.forget_ids else "retain"
    return "forget" if pid in plan.forget_ids else "retain"  # training data


def _profile_candidates(row: Mapping[str, Any]) -> Iterator[Candidate]:
    question, answer = row.get("question"), row.get("answer")
    if question is not None and answer is not None:
        yield "question", _cand("open_vqa", 0, question, answer, image=True), None
    tasks = row.get("Classification_Task")
    if tasks is not None and not isinstance(tasks, Mapping):
        yield (
            "Classification_Task",
            None,
            f"Classification_Task: expected a struct, got {type(tasks).__name__}",
        )
        tasks = None
    tasks = tasks or {}
    for family, task, image in (
        ("Image_Textual_Questions", "mc_vqa", True),
        ("Pure_Text_Questions", "mc_text", False),
    ):
        entries = tasks.get(family) or []
        if not isinstance(entries, (list, tuple)):
            where = f"Classification_Task.{family}"
            yield where, None, f"{where}: expected a list, got {type(entries).__name__}"
            continue
        for k, entry in enumerate(entries):
            where = f"Classification_Task.{family}[{k}]"
            if not isinstance(entry, Mapping):
                yield where, None, f"{where}: expected a struct, got {type(entry).__name__}"
                continue
            options, answer_text = _mc_options(entry)
            cand = _cand(task, k, entry.get("Question"), answer_text, image=image)
            cand["options"] = options
            yield where, cand, None
    for column, task in (("Generation_Task", "generation"), ("Mask_Task", "cloze")):
        entries = row.get(column) or []
        if not isinstance(entries, (list, tuple)):
            yield column, None, f"{column}: expected a list, got {type(entries).__name__}"
            continue
        for k, entry in enumerate(entries):
            where = f"{column}[{k}]"
            if not isinstance(entry, Mapping):
                yield where, None, f"{where}: expected a struct, got {type(entry).__name__}"
                continue
            kind = entry.get("Type")
            if kind not in (IMAGE_TYPE, TEXT_TYPE):
                yield where, None, f"{where}.Type: unknown {kind!r} (expected {IMAGE_TYPE} or {TEXT_TYPE})"
                continue
            yield (
                where,
                _cand(task, k, entry.get("Question"), entry.get("Ground_Truth"), image=kind == IMAGE_TYPE),
                None,
            )


def _training_candidates(row: Mapping[str, Any]) -> Iterator[Candidate]:
    raw = row.get("metadata")
    try:
        pairs = load_json_text(raw, max_bytes=None) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        yield "metadata", None, f"metadata: not valid JSON ({exc.msg})"
        return
    except ValueError as exc:  # too deep, a number Python cannot read
        yield "metadata", None, f"metadata: {exc}"
        return
    if not isinstance(pairs, list):
        yield (
            "metadata",
            None,
            f"metadata: expected a JSON list of {{Question, Answer}}, got {type(pairs).__name__}",
        )
        return
    for k, pair in enumerate(pairs):
        where = f"metadata[{k}]"
        if not isinstance(pair, Mapping):
            yield where, None, f"{where}: expected an object, got {type(pair).__name__}"
            continue
        yield where, _cand("fact_vqa", k, pair.get("Question"), pair.get("Answer"), image=True), None


def _cand(task: str, k: int, question: Any, answer: Any, *, image: bool) -> dict[str, Any]:
    return {
        "task": task,
        "_k": f"{k:02d}",
        "question": question,
        "answer": answer,
        "options": None,
        "image": None,
        "_needs_image": image,
    }


def _mc_options(entry: Mapping[str, Any]) -> tuple[Any, Any]:
    """([A, B, C, D] option texts, the correct option's text); odd shapes are left to validation."""
    raw = entry.get("Options")
    correct = entry.get("Correct_Answer")
    if not isinstance(raw, Mapping):
        return raw, correct
    keys = sorted(raw)
    options = [raw[k] for k in keys]
    if isinstance(correct, str):
        text = correct.strip()
        if text in raw:  # the published form: a letter
            return options, raw[text]
        if text in options:
            return options, text
        found = _LETTER_RE.match(text)  # "B.", "(B)", "B) the text"
        if found and found.group(1) in raw:
            return options, raw[found.group(1)]
    return options, correct


_PHOTO_FAMILY = {"mc_vqa": "classification", "mc_text": "classification"}


def _image_picker(row: Mapping[str, Any], pid: str) -> Callable[[str], Any]:
    """The image for a question of a task family: the row's image, or one of its unseen photos per
    family (seeded by ``TEST_PHOTO_SEED``, the person and the family, so every run picks the same)."""
    photos = [_image_bytes(p) for p in (row.get("images") or [])]
    if photos:
        return lambda family: random.Random(f"{TEST_PHOTO_SEED}:{pid}:{family}").choice(photos)
    single = _image_bytes(row.get("image"))
    return lambda _family: single


def _image_bytes(value: Any) -> Any:
    if isinstance(value, Mapping):  # the hub's Image feature: {"bytes": ..., "path": ...}
        return value.get("bytes")
    return value  # bytes, None, or something wrong that validation will name


def _person_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _private_facts(biography: Any) -> dict[str, Any]:
    if biography is None:
        return {}
    if isinstance(biography, Mapping):
        parsed: Any = biography
    else:
        if not isinstance(biography, (str, bytes)):
            raise ValueError(f"expected JSON text, got {type(biography).__name__}")
        try:
            parsed = load_json_text(biography, max_bytes=None)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from exc
        except ValueError as exc:  # too deep, a number Python cannot read
            raise ValueError(str(exc)) from exc
    if not isinstance(parsed, Mapping):
        raise ValueError(f"expected a JSON object, got {type(parsed).__name__}")
    facts = {_snake(str(k)): v for k, v in parsed.items()}
    if "name" not in facts:
        named = sorted(k for k in facts if k.endswith("name"))
        if named:
            facts["name"] = facts[named[0]]
    return facts


def _snake(key: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", key.strip().lower()).strip("_") or "field"


def _ids_of(config: SourceConfig) -> set[str]:
    ids: set[str] = set()
    for path in config.files:
        if "ID" not in pq.read_schema(path).names:
            continue
        column = pq.read_table(path, columns=["ID"]).column("ID")
        for i in range(len(column)):
            try:
                pid = _person_id(column[i].as_py())
            except UnicodeDecodeError:
                continue
            if pid is not None:
                ids.add(pid)
    return ids


def _has_training_columns(config: SourceConfig) -> bool:
    columns = config.columns()
    return TRAIN_COLUMNS <= columns and "Classification_Task" not in columns


def _looks_like_training(config: SourceConfig) -> bool:
    name = config.name
    if (
        _FORGET_RE.match(name)
        or _RETAIN_RE.match(name)
        or name in (TEST_CONFIG, FULL_CONFIG, CELEBRITY_CONFIG)
    ):
        return False
    return _has_training_columns(config)
