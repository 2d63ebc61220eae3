"""Fictitious people: unique names, identity signatures that stay far apart, private facts."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from unlearn_core.data.synth.vocab import (
    FACT_KEYS,
    FACT_VOCAB,
    FIRST_NAMES,
    HIDEABLE_FEATURES,
    IDENTITY_FEATURES,
    LAST_NAMES,
)

# Random streams (second seed word) so that each part of the benchmark draws independently.
STREAM_SIGNATURES, STREAM_NAMES, STREAM_FACTS = 1, 2, 3

# Minimum pairwise (all features, always-visible features) distances, tried in order: as many
# people as possible differ in 3+ features, 2+ of them visible even behind sunglasses.
_DISTANCE_TIERS: tuple[tuple[int, int], ...] = ((3, 2), (2, 2), (2, 1), (1, 1), (1, 0))


def rng_for(seed: int, *keys: int) -> np.random.Generator:
    """A generator for one named random stream, independent of how much other streams drew."""
    return np.random.default_rng([int(seed), *(int(k) for k in keys)])


@dataclass(frozen=True)
class Signature:
    """The identity features drawn on every image of a person (values from vocab.IDENTITY_FEATURES)."""

    skin: str
    face_shape: str
    eye_color: str
    hair_color: str
    hair_style: str
    mark: str

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in IDENTITY_FEATURES}


@dataclass(frozen=True)
class Person:
    index: int
    entity_id: str
    name: str
    facts: dict[str, str]  # FACT_KEYS -> value (all strings)
    signature: Signature

    @property
    def private_facts(self) -> dict[str, str]:
        return {"name": self.name, **{k: self.facts[k] for k in FACT_KEYS}}


def make_signatures(n: int, seed: int) -> list[Signature]:
    """``n`` distinct signatures, greedily kept as far apart as the feature grid allows."""
    keys = list(IDENTITY_FEATURES)
    sizes = [len(IDENTITY_FEATURES[k]) for k in keys]
    grid = np.array(list(itertools.product(*(range(s) for s in sizes))), dtype=np.int16)
    if n > len(grid):
        raise ValueError(f"at most {len(grid)} distinct identity signatures, asked for {n}")
    grid = grid[rng_for(seed, STREAM_SIGNATURES).permutation(len(grid))]
    visible = np.array([k not in HIDEABLE_FEATURES for k in keys])
    big = len(keys) + 1
    min_all = np.full(len(grid), big, dtype=np.int16)
    min_vis = np.full(len(grid), big, dtype=np.int16)
    taken = np.zeros(len(grid), dtype=bool)
    chosen: list[int] = []
    tier = 0
    while len(chosen) < n:
        need_all, need_vis = _DISTANCE_TIERS[tier]
        ok = ~taken & (min_all >= need_all) & (min_vis >= need_vis)
        if not ok.any():
            tier += 1
            continue
        pick = int(np.argmax(ok))  # first admissible candidate in shuffled order
        chosen.append(pick)
        taken[pick] = True
        diff = grid != grid[pick]
        np.minimum(min_all, diff.sum(axis=1), out=min_all)
        np.minimum(min_vis, diff[:, visible].sum(axis=1), out=min_vis)
    return [
        Signature(**{k: IDENTITY_FEATURES[k][int(c)] for k, c in zip(keys, grid[i], strict=True)})
        for i in chosen
    ]


def make_names(n: int, seed: int) -> list[str]:
    """``n`` unique full names; the first 64 people also get pairwise distinct first and last names."""
    nf, nl = len(FIRST_NAMES), len(LAST_NAMES)
    if n > nf * nl:
        raise ValueError(f"at most {nf * nl} unique names, asked for {n}")
    rng = rng_for(seed, STREAM_NAMES)
    firsts, lasts = rng.permutation(nf), rng.permutation(nl)
    # Block b of nf people pairs first name j with last name (j + b) mod nl: all pairs distinct.
    return [f"{FIRST_NAMES[firsts[i % nf]]} {LAST_NAMES[lasts[(i % nf + i // nf) % nl]]}" for i in range(n)]


def make_facts(n: int, seed: int) -> list[dict[str, str]]:
    """Private facts, each value spread evenly over people (shuffled vocabularies, repeated)."""
    columns: dict[str, list[str]] = {}
    for j, key in enumerate(FACT_KEYS):
        rng = rng_for(seed, STREAM_FACTS, j)
        vocab = FACT_VOCAB[key]
        values: list[str] = []
        while len(values) < n:
            values.extend(vocab[i] for i in rng.permutation(len(vocab)))
        columns[key] = values[:n]
    return [{k: columns[k][i] for k in FACT_KEYS} for i in range(n)]


def make_people(n: int, seed: int) -> list[Person]:
    """People ``p000``, ``p001``, ... (deterministic from ``seed``)."""
    sigs, names, facts = make_signatures(n, seed), make_names(n, seed), make_facts(n, seed)
    width = max(3, len(str(n - 1)))
    return [
        Person(index=i, entity_id=f"p{i:0{width}d}", name=names[i], facts=facts[i], signature=sigs[i])
        for i in range(n)
    ]
