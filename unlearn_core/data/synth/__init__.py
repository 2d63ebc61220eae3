"""The synthetic identity benchmark: fictitious people drawn with Pillow, canonical records.

``generate_benchmark(cfg)`` is the entry point; it is deterministic from ``cfg.seed``.
"""

from unlearn_core.data.synth.benchmark import (
    FACT_QUESTIONS,
    GENERATOR_VERSION,
    TEXT_FACT_QUESTIONS,
    attribute_phrase,
    caption,
    forget_indices,
    generate_benchmark,
)
from unlearn_core.data.synth.faces import Jitter, encode_png, render_face
from unlearn_core.data.synth.people import Person, Signature, make_people
from unlearn_core.data.synth.vocab import FACT_KEYS, IDENTITY_FEATURES, VISIBLE_ATTRIBUTES

__all__ = [
    "FACT_KEYS",
    "FACT_QUESTIONS",
    "GENERATOR_VERSION",
    "IDENTITY_FEATURES",
    "TEXT_FACT_QUESTIONS",
    "VISIBLE_ATTRIBUTES",
    "Jitter",
    "Person",
    "Signature",
    "attribute_phrase",
    "caption",
    "encode_png",
    "forget_indices",
    "generate_benchmark",
    "make_people",
    "render_face",
]
