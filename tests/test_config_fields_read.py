"""Every field of the config schema is read by the code: a field that is accepted and ignored fails here.

The check is static (``ast``), over ``unlearn_core`` and ``pipelines`` minus the schema itself: a field
``train.lr`` counts as read where code takes ``.lr`` from something that is a ``TrainConfig``: an
expression ending in ``.train`` (``cfg.train.lr``), a name annotated ``TrainConfig`` (``tc: TrainConfig``),
or a name assigned from ``<x>.train`` (``t = cfg.train``). Top-level fields (``workdir``, ``records``...)
count where ``.workdir`` is taken from anything annotated or named as a ``RunConfig``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel

from unlearn_core.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
SOURCES = [
    p
    for root in ("unlearn_core", "pipelines")
    for p in sorted((REPO / root).rglob("*.py"))
    if p != REPO / "unlearn_core" / "config.py"
]


def schema_fields(model: type[BaseModel] = RunConfig) -> dict[str, set[str]]:
    """Section class name -> its leaf field names (nested sections are walked, not listed)."""
    out: dict[str, set[str]] = {model.__name__: set()}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(schema_fields(ann))
        else:
            out[model.__name__].add(name)
    return out


def section_of_attr(model: type[BaseModel] = RunConfig) -> dict[str, str]:
    """Attribute name that holds a section (``train``) -> the section class name (``TrainConfig``)."""
    out: dict[str, str] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out[name] = ann.__name__
            out.update(section_of_attr(ann))
    return out


class _Reads(ast.NodeVisitor):
    """Collect (section class, field) pairs read anywhere in one module."""

    def __init__(self, sections: dict[str, str], classes: set[str]) -> None:
        self.sections, self.classes = sections, classes
        self.bound: list[dict[str, str]] = [{}]  # name -> section class, per function scope
        self.reads: set[tuple[str, str]] = set()

    def _section(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Attribute) and node.attr in self.sections:
            return self.sections[node.attr]
        if isinstance(node, ast.Name):
            for scope in reversed(self.bound):
                if node.id in scope:
                    return scope[node.id]
            if node.id == "cfg" or node.id.endswith("_cfg"):
                return "RunConfig"  # the project's name for a RunConfig; checked against the field below
        return None

    def _annotated(self, ann: ast.AST | None) -> str | None:
        text = ast.unparse(ann) if ann is not None else ""
        return next((c for c in self.classes if c in text.split("|")[0].strip().strip("'\"")), None)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        scope = {}
        for arg in [*node.args.args, *node.args.kwonlyargs]:
            if (cls := self._annotated(arg.annotation)) is not None:
                scope[arg.arg] = cls
        self.bound.append(scope)
        self.generic_visit(node)
        self.bound.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        cls = self._section(node.value)
        if cls is not None:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.bound[-1][target.id] = cls
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        cls = self._section(node.value)
        if cls is not None:
            self.reads.add((cls, node.attr))
        self.generic_visit(node)


def fields_read() -> set[tuple[str, str]]:
    classes = set(schema_fields())
    reads: set[tuple[str, str]] = set()
    for path in SOURCES:
        visitor = _Reads(section_of_attr(), classes)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        reads |= visitor.reads
    return reads


def test_every_config_field_is_read_somewhere():
    reads = fields_read()
    unread = sorted(
        f"{cls}.{name}"
        for cls, names in schema_fields().items()
        for name in names
        if (cls, name) not in reads
    )
    assert unread == [], f"config fields nothing reads (wire them up or remove them): {unread}"


def test_the_walk_finds_a_field_that_nothing_reads(tmp_path):
    """The checker itself: a module that reads ``cfg.train.lr`` counts; an unknown field does not."""
    visitor = _Reads(section_of_attr(), set(schema_fields()))
    visitor.visit(
        ast.parse(
            "def f(cfg, tc: TrainConfig):\n    t = cfg.model\n    return cfg.train.lr, tc.seed, t.lora\n"
        )
    )
    assert {("TrainConfig", "lr"), ("TrainConfig", "seed"), ("ModelConfig", "lora")} <= visitor.reads
    assert ("TrainConfig", "steps") not in visitor.reads
