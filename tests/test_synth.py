"""The synthetic identity benchmark: determinism, splits, question families, leaks, pixels."""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from unlearn_core.config import SynthConfig
from unlearn_core.data.schema import SPLITS, TASKS, Record, rows_to_table
from unlearn_core.data.synth import FACT_QUESTIONS, generate_benchmark, make_people
from unlearn_core.data.synth.benchmark import attribute_phrase, caption, holdout_people
from unlearn_core.data.synth.faces import BACKGROUND_RGB, HAIR_RGB, SHIRT_RGB, SKIN_RGB
from unlearn_core.data.synth.people import make_names, make_signatures
from unlearn_core.data.synth.vocab import (
    FACT_KEYS,
    IDENTITY_FEATURES,
    VISIBLE_ATTRIBUTES,
    vocabulary_conflicts,
)
from unlearn_core.prompts import OPEN_QUESTIONS

SMALL = SynthConfig(
    people=8,
    images_per_person=3,
    unseen_per_person=2,
    forget_pct=25,
    utility_people=2,
    describe_images=5,
    seed=3,
)
FULL_IMAGE_TASKS = {"identity_vqa", "open_vqa", "fact_vqa", "mc_vqa", "caption", "guided"}
EXPECTED_TASKS = {
    "forget": FULL_IMAGE_TASKS | {"text_qa", "mc_text"},
    "retain": FULL_IMAGE_TASKS | {"text_qa", "mc_text"},
    "forget_unseen": FULL_IMAGE_TASKS,
    "retain_unseen": FULL_IMAGE_TASKS,
    "utility": {"caption", "guided"},
    "describe": {"caption", "guided"},
    "holdout": FULL_IMAGE_TASKS | {"text_qa", "mc_text"},
}


@pytest.fixture(scope="module")
def small() -> list[Record]:
    return generate_benchmark(SMALL)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)


def _dominant(px: np.ndarray, palette: dict[str, tuple[int, int, int]], tol: int = 6) -> str:
    """The palette colour covering the most pixels (flat colours survive downsampling exactly)."""
    counts = {k: int((np.abs(px - np.array(c)).max(axis=-1) <= tol).sum()) for k, c in palette.items()}
    return max(counts, key=counts.__getitem__)


def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda k: float(np.abs(rgb - np.array(palette[k])).sum()))


def test_vocabularies_share_no_words():
    assert vocabulary_conflicts() == []
    assert set(TASKS) >= set().union(*EXPECTED_TASKS.values())
    assert set(EXPECTED_TASKS) == set(SPLITS)


def test_same_seed_same_bytes_other_seed_differs():
    a = [r.to_row() for r in generate_benchmark(SMALL)]
    b = [r.to_row() for r in generate_benchmark(SMALL)]
    assert a == b
    other = [r.to_row() for r in generate_benchmark(SMALL.model_copy(update={"seed": 4}))]
    assert len(other) == len(a)
    assert [r["image"] for r in other] != [r["image"] for r in a]
    assert {r["answer"] for r in other if r["task"] == "identity_vqa"} != {
        r["answer"] for r in a if r["task"] == "identity_vqa"
    }
    rows_to_table(a)  # fits the canonical Arrow schema


def test_split_sizes_and_disjoint_people(small: list[Record]):
    recs = small
    by_split: dict[str, set[str]] = defaultdict(set)
    images: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    for r in recs:
        by_split[r.split].add(r.entity_id)
        if r.image is not None:
            images[(r.split, r.entity_id)].add(r.image)
    assert len(by_split["forget"]) == 2 and len(by_split["retain"]) == 6
    assert not by_split["forget"] & by_split["retain"]
    assert by_split["forget_unseen"] == by_split["forget"]
    assert by_split["retain_unseen"] == by_split["retain"]
    assert len(by_split["utility"]) == 2 and not by_split["utility"] & (
        by_split["forget"] | by_split["retain"]
    )
    assert len(by_split["describe"]) == 5  # anonymous faces, one image each, nobody else's
    assert not by_split["describe"] & (by_split["forget"] | by_split["retain"] | by_split["utility"])
    assert len(by_split["holdout"]) == 2  # one per forget person, nobody else's
    others = set().union(*(v for k, v in by_split.items() if k != "holdout"))
    assert not by_split["holdout"] & others
    for (split, _), imgs in images.items():
        expected = {"forget": 3, "retain": 3, "utility": 3, "describe": 1, "holdout": 3}.get(split, 2)
        assert len(imgs) == expected
    ids = [r.sample_id for r in recs]
    assert len(ids) == len(set(ids))
    assert all(r.source == "synthetic" for r in recs)


def test_every_family_in_its_splits(small: list[Record]):
    tasks: dict[str, set[str]] = defaultdict(set)
    for r in small:
        tasks[r.split].add(r.task)
    assert dict(tasks) == EXPECTED_TASKS


def test_default_config_counts():
    recs = generate_benchmark(SynthConfig())
    counts: dict[str, int] = defaultdict(int)
    for r in recs:
        counts[r.split] += 1
    guided = 2 + 5  # identity + open + one per fact, under the guidance instruction
    per_image, per_person_text = 14 + guided, 10
    assert counts["forget"] == 4 * (6 * per_image + per_person_text)
    assert counts["retain"] == 36 * (6 * per_image + per_person_text)
    assert counts["forget_unseen"] == 4 * 2 * per_image
    assert counts["retain_unseen"] == 36 * 2 * per_image
    assert counts["utility"] == 8 * 6 * (1 + guided)
    assert counts["describe"] == 5760 * 2  # a caption + a guided answer each
    assert counts["holdout"] == 4 * (6 * per_image + per_person_text)  # as many as forget people
    # Every split but holdout is byte-identical to generator version 2 (before holdout people existed),
    # so the default vanilla model's training data did not move: sha256 of those rows then.
    digest = hashlib.sha256()
    for row in (r.to_row() for r in recs if r.split != "holdout"):
        for k in sorted(row):
            v = row[k]
            digest.update(k.encode())
            digest.update(v if isinstance(v, bytes) else json.dumps(v).encode())
    assert digest.hexdigest() == "40c4a636cf9f1041651471011ec4b131925e12ae7920e49d68faee9381f0ab98"
    fewer = generate_benchmark(SynthConfig(describe_images=7))
    core = [r for r in recs if r.split not in ("describe", "holdout")]
    assert [r for r in fewer if r.split not in ("describe", "holdout")] == core  # the others do not move
    assert sum(r.split == "describe" for r in fewer) == 7 * 2
    assert [r for r in generate_benchmark(SynthConfig(describe_images=0)) if r.split != "holdout"] == core


def test_answers_and_questions_follow_the_formats(small: list[Record]):
    for r in small:
        facts = r.private_facts
        if r.split == "describe":  # anonymous: nothing to leak, the answer names what is drawn
            assert facts == {} and r.task in ("caption", "guided")
            assert r.answer.lower().endswith(attribute_phrase(r.visible_attributes) + ".")
            assert r.answer == caption(r.visible_attributes) or r.answer.startswith("I will not")
        else:
            assert set(facts) == {"name", *FACT_KEYS} and all(isinstance(v, str) for v in facts.values())
        if r.task == "identity_vqa":
            assert r.question == OPEN_QUESTIONS["identity_vqa"] and r.answer == f"{facts['name']}."
        elif r.task == "open_vqa":
            assert r.question == OPEN_QUESTIONS["open_vqa"]
            assert all(v in r.answer for v in facts.values())
        elif r.task == "fact_vqa":
            key = r.sample_id.rsplit("/", 1)[1]
            assert r.question == FACT_QUESTIONS[key] and r.answer == facts[key]
        elif r.task in ("text_qa", "mc_text"):
            assert r.image is None and r.visible_attributes == {}
            assert facts["name"] in r.question and r.answer in facts.values()
        if r.image is not None:
            assert set(r.visible_attributes) == set(VISIBLE_ATTRIBUTES)
            assert all(v in VISIBLE_ATTRIBUTES[k] for k, v in r.visible_attributes.items())
        json.loads(r.to_row()["private_facts"])


def test_multiple_choice_options(small: list[Record]):
    positions = set()
    for r in small:
        if r.task not in ("mc_vqa", "mc_text"):
            assert r.options is None
            continue
        assert r.options is not None and len(r.options) == 4 and len(set(r.options)) == 4
        assert r.answer in r.options
        positions.add(r.options.index(r.answer))
        key = r.sample_id.rsplit("/", 1)[1]
        if r.task == "mc_vqa":
            assert r.question == (OPEN_QUESTIONS["identity_vqa"] if key == "name" else FACT_QUESTIONS[key])
        if key == "name":
            assert all(o.endswith(".") for o in r.options)
        else:
            assert all(o.strip() == o and not o.endswith(".") for o in r.options)
    assert positions == {0, 1, 2, 3}


def test_caption_and_guided_reveal_nothing_private_but_every_attribute(small: list[Record]):
    recs = small
    secrets = set()
    for r in recs:
        for v in r.private_facts.values():
            secrets.add(v.lower())
            secrets.update(w for w in _words(v))
    for r in recs:
        if r.task not in ("caption", "guided"):
            continue
        text = r.answer.lower()
        assert not [s for s in secrets if s in text], r.answer
        ws = set(_words(r.answer))
        for key, value in r.visible_attributes.items():
            if value == "none":
                assert not ws & set(VISIBLE_ATTRIBUTES[key][1:]), (key, r.answer)
            else:
                assert value in ws, (key, value, r.answer)


def test_identity_is_in_the_pixels_and_attributes_vary(small: list[Record]):
    cfg = SMALL
    everyone = make_people(cfg.people + cfg.utility_people, cfg.seed)
    people = {p.entity_id: p for p in [*everyone, *holdout_people(cfg, everyone)]}
    seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in small:
        if r.task != "caption":
            continue
        px = _pixels(r.image or b"")
        n = cfg.image_size
        assert _nearest(px[n - 3, n // 2], SHIRT_RGB) == r.visible_attributes["shirt"]
        assert _nearest(px[1, n - 2], BACKGROUND_RGB) == r.visible_attributes["background"]
        if r.split == "describe":
            continue
        assert px.shape == (cfg.image_size, cfg.image_size, 3)
        sig = people[r.entity_id].signature
        assert _dominant(px, SKIN_RGB) == sig.skin
        assert _dominant(px, HAIR_RGB) == sig.hair_color
        seen[r.entity_id]["shirt"].add(r.visible_attributes["shirt"])
        seen[r.entity_id]["background"].add(r.visible_attributes["background"])
    for eid, attrs in seen.items():
        n_img = cfg.images_per_person + (0 if eid >= f"p{cfg.people:03d}" else cfg.unseen_per_person)
        assert len(attrs["shirt"]) == n_img and len(attrs["background"]) == n_img
    sigs = [tuple(p.signature.as_dict().values()) for p in people.values()]
    assert len(set(sigs)) == len(sigs)


def test_signatures_stay_apart_at_scale():
    sigs = make_signatures(300, seed=0)
    codes = np.array([[IDENTITY_FEATURES[k].index(v) for k, v in s.as_dict().items()] for s in sigs])
    dist = (codes[:, None, :] != codes[None, :, :]).sum(-1) + np.eye(len(codes), dtype=int) * 99
    assert dist.min() >= 2
    assert (make_signatures(60, seed=0)[0] == sigs[0]) and dist[:60, :60].min() >= 3
    names = make_names(4000, seed=1)
    assert len(set(names)) == 4000
    assert len({n.split()[0] for n in names[:64]}) == 64


@pytest.mark.parametrize("size", [32, 64])
def test_images_decode_at_the_configured_size(size: int):
    cfg = SMALL.model_copy(update={"image_size": size, "people": 4, "utility_people": 0})
    recs = generate_benchmark(cfg)
    for png in {r.image for r in recs if r.image is not None}:
        img = Image.open(io.BytesIO(png))
        assert img.format == "PNG" and img.size == (size, size) and img.mode == "RGB"


def test_a_workspace_generates_its_benchmark_again_when_the_synth_config_changes(tmp_path) -> None:
    """The cached records are reused for the same ``synth`` config only: another config (or a new
    generator version) must not silently keep training on the old benchmark."""
    from pipelines.workspace import Workspace, ensure_records
    from unlearn_core.config import RunConfig
    from unlearn_core.data.records_io import read_meta

    ws, said = Workspace(tmp_path), []
    small = RunConfig(workdir=str(tmp_path), synth=SMALL)
    ensure_records(small, ws, said.append)
    first = read_meta(ws.records)["counts"]["splits"]["describe"]["total"]
    ensure_records(small, ws, said.append)
    assert any("[cached]" in line for line in said)
    more = RunConfig(workdir=str(tmp_path), synth=SMALL.model_copy(update={"describe_images": 9}))
    said.clear()
    ensure_records(more, ws, said.append)
    assert any("generating it again" in line for line in said)
    assert (first, read_meta(ws.records)["counts"]["splits"]["describe"]["total"]) == (2 * 5, 2 * 9)


def test_holdout_people_recombine_the_forget_peoples_words(small: list[Record]):
    """Holdout people are true non-members that differ from forget people only in who the words belong
    to: the same name parts and fact values, shuffled, no forget person's full name, new faces; so the
    tokenizer trained on every record knows every holdout word and has the same vocabulary without them."""
    from unlearn_core.models.tokenizer import train_word_tokenizer

    forget = {r.entity_id: r.private_facts for r in small if r.split == "forget"}
    holdout = {r.entity_id: r.private_facts for r in small if r.split == "holdout"}
    assert len(holdout) == len(forget) == 2
    for key in FACT_KEYS:
        assert sorted(f[key] for f in holdout.values()) == sorted(f[key] for f in forget.values())
    first = sorted(f["name"].split()[0] for f in holdout.values())
    last = sorted(f["name"].split()[-1] for f in holdout.values())
    assert first == sorted(f["name"].split()[0] for f in forget.values())
    assert last == sorted(f["name"].split()[-1] for f in forget.values())
    assert not {f["name"] for f in holdout.values()} & {f["name"] for f in forget.values()}
    face = {r.entity_id: r.image for r in small if r.split in ("forget", "holdout") and r.task == "caption"}
    assert len(set(face.values())) == len(face)  # every image drawn anew

    def texts(records: list[Record]) -> list[str]:
        return [t for r in records for t in (r.question, r.answer, *(r.options or []))]

    without = [r for r in small if r.split != "holdout"]
    assert train_word_tokenizer(texts(small)).get_vocab() == train_word_tokenizer(texts(without)).get_vocab()


def test_no_holdout_people_with_one_forget_person():
    one = generate_benchmark(SMALL.model_copy(update={"forget_pct": 10, "describe_images": 0}))
    assert sum(r.split == "forget" and r.task == "identity_vqa" for r in one) == 3  # one person
    assert not [r for r in one if r.split == "holdout"]
