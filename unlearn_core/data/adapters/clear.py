"""CLEAR (HF ``therem/CLEAR``) -> canonical records.

Source: the dataset folder as downloaded from the hub, one subfolder per config holding parquet
files. Published configs and columns:
  forgetNN, retainNN                 image, caption, name           (NN in 01/05/10, 99/95/90)
  forgetNN+tofu, retainNN+tofu       image, caption, question, answer: the CLEAR caption rows (image
                                     set, no name column) plus the TOFU text rows (image null)
  forgetNN_perturbed, retain_perturbed
                                     image, caption, name, perturbed_captions, paraphrased_caption,
                                     perturbed_names
  real_faces                         image, answer, options          (celebrity faces)
  real_world                         image, question, answer, options
  full, full+tofu, default (data/)   everything: forget + retain

Mapping (decisions):
  forgetNN (``forget_config``; default: the only forget percentage present, else forget10) ->
    caption records in forget; retain{100-NN} ->
    caption records in retain. Question: a fixed caption prompt; answer: the caption; entity: name.
  forgetNN_perturbed / retain_perturbed -> mc_vqa in forget / retain: "Who is this person?", options
    = the true name and the perturbed names, sorted alphabetically (so the answer's position carries
    no signal), answer = the true name. ``paraphrased_caption`` and ``perturbed_captions``, where
    present, are kept on that record in ``answer_variants`` ({"caption", "paraphrased", "perturbed":
    [...]}): the inputs of CLEAR's truth ratio, which `unlearn score` computes from per-token losses;
    and CLEAR's FaceRec task, ``"facerec": {"question": FACE_QUESTION, "answer": name, "perturbed":
    perturbed_names}``.
  forgetNN+tofu / retainNN+tofu -> text_qa (no image) in forget / retain for the TOFU rows; the
    entity is the CLEAR person of the same side whose name appears in the question or answer
    (longest match), else ``clear:tofu-unmatched:<side>`` (counted in a warning). Their caption rows
    duplicate forgetNN / retainNN and are skipped (``skipped_rows``); without the plain config they
    are converted, with the entity found the same way in the caption.
  real_faces -> mc_vqa in utility (entity ``clear-real:<answer>``); real_world -> mc_vqa (mc_text
    without an image; generation without options) in utility, entity ``clear:real_world``. When the
    answer is not among ``options`` they are distractors: options = sorted(distractors + answer).
    CLEAR's own open reading of them is kept in ``answer_variants``: ``"open": {"question"
    (FACE_QUESTION for real_faces, the row's question for real_world), "answer", "perturbed": the
    options as published}``.
  Other percentages, full, full+tofu and the default config are skipped (listed in the report).
Entity ids ``clear:<name>``; private_facts ``{"name": <name>}``; sample ids
``clear:<config>:<row number in the config>``; source ``clear:<config>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn_core.data.adapters import (
    ConfigCounts,
    Conversion,
    ConvertReport,
    SourceConfig,
    discover_configs,
    iter_parquet_rows,
)
from unlearn_core.data.schema import RecordError
from unlearn_core.prompts import OPEN_QUESTIONS

FORMAT = "clear"
DEFAULT_FORGET_CONFIG = "forget10"
CAPTION_QUESTION = "Describe what you see in this image."
# CLEAR's question for the face tasks (mm/dataset.py question_strategy "random_faces"): FaceRec and
# real_faces are scored on the name that completes it.
FACE_QUESTION = "The name of the person on the image is "
IDENTITY_QUESTION = OPEN_QUESTIONS["identity_vqa"]
REAL_FACES, REAL_WORLD, RETAIN_PERTURBED = "real_faces", "real_world", "retain_perturbed"
SUPERSETS = ("full", "full+tofu", "default", "data")
_FORGET_RE = re.compile(r"^forget(\d{2})$")
_FORGET_PREFIX_RE = re.compile(r"^(forget\d{2})(\+tofu|_perturbed)?$")
_KNOWN_RE = re.compile(r"^(forget|retain)\d{2}(\+tofu|_perturbed)?$")
_COLUMNS = {  # kind -> required columns
    "caption": ("image", "caption", "name"),
    "perturbed": ("image", "name", "perturbed_names"),
    "tofu": ("image", "caption", "question", "answer"),
    "real_faces": ("image", "answer", "options"),
    "real_world": ("image", "question", "answer", "options"),
}


@dataclass
class _Job:
    config: str
    kind: str  # a key of _COLUMNS
    side: str  # forget | retain | utility


@dataclass
class _State:
    names: dict[str, set[str]] = field(default_factory=lambda: {"forget": set(), "retain": set()})
    converted: set[str] = field(default_factory=set)
    unmatched: dict[str, int] = field(default_factory=dict)


def convert(source: Path, out: Path, *, forget_config: str | None = None) -> ConvertReport:
    """Convert a CLEAR folder into a records folder; see the module docstring for the mapping."""
    source, out = Path(source), Path(out)
    configs = discover_configs(source, example=f"{DEFAULT_FORGET_CONFIG}/train-*.parquet")
    if forget_config is None:
        present = sorted({m.group(1) for n in configs if (m := _FORGET_PREFIX_RE.match(n))})
        forget_config = present[0] if len(present) == 1 else DEFAULT_FORGET_CONFIG
    match = _FORGET_RE.match(forget_config)
    if not match:
        raise RecordError(f"forget_config must look like 'forget10', got {forget_config!r}")
    conv = Conversion(FORMAT, source, out)
    jobs = _plan(configs, forget_config, f"retain{100 - int(match.group(1)):02d}", conv)
    state = _State()
    for job in jobs:
        _convert_config(job, configs[job.config], state, conv)
    for config, n in state.unmatched.items():
        conv.warn(
            f"{config}: {n} TOFU row(s) name no known CLEAR person of their side; entity clear:tofu-unmatched"
        )
    return conv.finish(f"{FORMAT}:{forget_config}")


def _plan(configs: Mapping[str, SourceConfig], forget: str, retain: str, conv: Conversion) -> list[_Job]:
    available = sorted({m.group(1) for n in configs if (m := _FORGET_PREFIX_RE.match(n))})
    if forget not in available and available:
        raise RecordError(
            f"no config of forget percentage {forget!r} under {conv.source}; available: {', '.join(available)} "
            "(pass forget_config=...)"
        )
    wanted = [
        _Job(forget, "caption", "forget"),
        _Job(retain, "caption", "retain"),
        _Job(f"{forget}_perturbed", "perturbed", "forget"),
        _Job(RETAIN_PERTURBED, "perturbed", "retain"),
        _Job(f"{forget}+tofu", "tofu", "forget"),
        _Job(f"{retain}+tofu", "tofu", "retain"),
        _Job(REAL_FACES, "real_faces", "utility"),
        _Job(REAL_WORLD, "real_world", "utility"),
    ]
    jobs = [job for job in wanted if job.config in configs]
    chosen = {job.config for job in jobs}
    for name in configs:
        if name in chosen:
            continue
        if name in SUPERSETS:
            conv.skip_config(name, f"superset of {forget} + {retain}")
        elif _KNOWN_RE.match(name):
            conv.skip_config(name, f"another forget/retain percentage; converting {forget} + {retain}")
        else:
            conv.warn(f"folder {name!r} matches no known CLEAR config; not converted")
    for job in wanted[:2]:
        if job.config not in configs:
            conv.warn(f"{job.config} not found: no {job.side} captions")
    return jobs


def _convert_config(job: _Job, config: SourceConfig, state: _State, conv: Conversion) -> None:
    task = {"caption": "caption", "perturbed": "mc_vqa", "tofu": "text_qa"}.get(job.kind, "mc_vqa")
    counts = conv.config(job.config, f"{job.side} ({task})")
    number = 0
    for path in config.files:
        for index, row, bad in iter_parquet_rows(path):
            counts.source_rows += 1
            origin = config.origin(path, index)
            sample_id = f"clear:{job.config}:{number:06d}"
            number += 1
            missing = [c for c in _COLUMNS[job.kind] if c not in row]
            if bad or missing:
                reason = (
                    f"{bad[0]}: not valid UTF-8 text in the source file"
                    if bad
                    else (f"{missing[0]}: column missing from {origin.split('#')[0]}")
                )
                conv.reject(origin, reason, row)
                continue
            _convert_row(job, row, origin, sample_id, state, conv, counts)
    state.converted.add(job.config)


def _convert_row(
    job: _Job,
    row: dict[str, Any],
    origin: str,
    sample_id: str,
    state: _State,
    conv: Conversion,
    counts: ConfigCounts,
) -> None:
    base = {
        "sample_id": sample_id,
        "split": job.side,
        "image": _image_bytes(row.get("image")),
        "visible_attributes": {},
        "source": f"{FORMAT}:{job.config}",
        "options": None,
    }
    if job.kind in ("caption", "perturbed"):
        name = row.get("name")
        if not isinstance(name, str) or not name.strip():
            conv.reject(origin, f"name: expected a non-empty str, got {name!r}", row)
            return
        wrong = _wrong_text_lists(row, ("perturbed_captions", "perturbed_names"))
        if wrong:
            conv.reject(origin, wrong, row)
            return
        state.names[job.side].add(name.strip())
        person = {"entity_id": f"clear:{name.strip()}", "private_facts": {"name": name.strip()}}
        if job.kind == "caption":
            conv.add(
                origin,
                {
                    **base,
                    **person,
                    "task": "caption",
                    "question": CAPTION_QUESTION,
                    "answer": row.get("caption"),
                },
            )
        else:
            conv.add(
                origin,
                {
                    **base,
                    **person,
                    "task": "mc_vqa",
                    "question": IDENTITY_QUESTION,
                    "answer": name.strip(),
                    "options": _name_options(name.strip(), row.get("perturbed_names")),
                    "answer_variants": {
                        **_caption_variants(row),
                        **_against("facerec", FACE_QUESTION, name.strip(), row.get("perturbed_names")),
                    },
                },
            )
    elif job.kind == "tofu":
        _convert_tofu_row(job, row, origin, base, state, conv, counts)
    elif job.kind == "real_faces":
        answer = row.get("answer")
        known = isinstance(answer, str) and bool(answer.strip())
        conv.add(
            origin,
            {
                **base,
                "entity_id": f"clear-real:{answer}" if known else "clear-real:unknown",
                "private_facts": {"name": answer} if isinstance(answer, str) else {},
                "task": "mc_vqa",
                "question": IDENTITY_QUESTION,
                "answer": answer,
                "options": _with_answer(row.get("options"), answer),
                "answer_variants": _against("open", FACE_QUESTION, answer, row.get("options")),
            },
        )
    else:
        options = row.get("options")
        has_options = options is not None and (not isinstance(options, list) or len(options) > 0)
        task = ("mc_vqa" if base["image"] is not None else "mc_text") if has_options else "generation"
        conv.add(
            origin,
            {
                **base,
                "entity_id": "clear:real_world",
                "private_facts": {},
                "task": task,
                "question": row.get("question"),
                "answer": row.get("answer"),
                "options": _with_answer(options, row.get("answer")) if has_options else None,
                "answer_variants": _against("open", row.get("question"), row.get("answer"), options),
            },
        )


def _convert_tofu_row(
    job: _Job,
    row: dict[str, Any],
    origin: str,
    base: dict[str, Any],
    state: _State,
    conv: Conversion,
    counts: ConfigCounts,
) -> None:
    plain = job.config.split("+", 1)[0]
    names = state.names[job.side]
    if base["image"] is not None:  # a CLEAR caption row
        if plain in state.converted:
            counts.skipped_rows += 1
            return
        name = _find_name(names, [row.get("caption")])
        if name is None:
            conv.reject(
                origin,
                "name: +tofu caption rows carry no name column and the caption names no "
                f"known person; convert {plain} as well",
                row,
            )
            return
        conv.add(
            origin,
            {
                **base,
                "entity_id": f"clear:{name}",
                "private_facts": {"name": name},
                "task": "caption",
                "question": CAPTION_QUESTION,
                "answer": row.get("caption"),
            },
        )
        return
    name = _find_name(names, [row.get("question"), row.get("answer")])
    if name is None:
        state.unmatched[job.config] = state.unmatched.get(job.config, 0) + 1
    entity = f"clear:{name}" if name else f"clear:tofu-unmatched:{job.side}"
    conv.add(
        origin,
        {
            **base,
            "entity_id": entity,
            "private_facts": {"name": name} if name else {},
            "task": "text_qa",
            "question": row.get("question"),
            "answer": row.get("answer"),
        },
    )


def _wrong_text_lists(row: Mapping[str, Any], columns: Iterable[str]) -> str | None:
    """The first of ``columns`` present in ``row`` that is not a list of strings, as a reason."""
    for column in columns:
        value = row.get(column)
        if value is None:
            continue
        if not isinstance(value, (list, tuple)):
            return f"{column}: expected a list of str, got {type(value).__name__}"
        bad = next((v for v in value if not isinstance(v, str)), None)
        if bad is not None:
            return f"{column}: expected a list of str, holds a {type(bad).__name__}"
    return None


def _caption_variants(row: Mapping[str, Any]) -> dict[str, Any]:
    """CLEAR's paraphrased / perturbed captions of a perturbed-config row (truth ratio inputs)."""
    variants: dict[str, Any] = {}
    if row.get("paraphrased_caption") is not None:
        variants["paraphrased"] = row["paraphrased_caption"]
    if row.get("perturbed_captions") is not None:
        variants["perturbed"] = list(row["perturbed_captions"])
    if row.get("caption") is not None:
        variants["caption"] = row["caption"]
    return variants


def _against(key: str, question: Any, answer: Any, perturbed: Any) -> dict[str, Any]:
    """``{key: {"question", "answer", "perturbed"}}``: an answer scored against the published wrong ones
    (``perturbed_names`` for FaceRec, ``options`` for real_faces / real_world, kept as published:
    CLEAR's ``mm/eval.py`` uses them as its perturbed answers), or {} when they are not strings."""
    ok = isinstance(question, str) and isinstance(answer, str) and answer.strip()
    if not ok or not isinstance(perturbed, list) or not perturbed:
        return {}
    if not all(isinstance(p, str) for p in perturbed):
        return {}
    return {key: {"question": question, "answer": answer.strip(), "perturbed": list(perturbed)}}


def _find_name(names: Iterable[str], texts: Iterable[Any]) -> str | None:
    joined = " ".join(t for t in texts if isinstance(t, str))
    for name in sorted(names, key=lambda n: (-len(n), n)):
        if name in joined:
            return name
    return None


def _name_options(name: str, perturbed: Any) -> Any:
    if isinstance(perturbed, list) and all(isinstance(p, str) for p in perturbed):
        return sorted({name, *(p.strip() for p in perturbed)})
    return perturbed  # validation names the problem


def _with_answer(options: Any, answer: Any) -> Any:
    if isinstance(options, list) and isinstance(answer, str) and all(isinstance(o, str) for o in options):
        return options if answer in options else sorted({*options, answer})
    return options


def _image_bytes(value: Any) -> Any:
    if isinstance(value, Mapping):  # the hub's Image feature: {"bytes": ..., "path": ...}
        return value.get("bytes")
    return value
