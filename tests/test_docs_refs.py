"""The project documents itself: code, --help and every document cite files, commands, flags and config
keys of this repository, and those exist; the configuration reference is the schema's; the README
stays a short guide without dated measurements."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from pipelines.cli import build_parser
from pipelines.config_reference import COMMAND, render, schema_fields, undocumented
from unlearn_core.config import RunConfig, flatten
from unlearn_core.method_registry import REGISTRY

REPO = Path(__file__).resolve().parents[1]
# Documents outside the repository that older code cited; nothing may cite them again.
OUTSIDE = re.compile(r"\bDESIGN\b|pipelines\.registry")
DOCS = sorted(
    str(p.relative_to(REPO))
    for p in [
        REPO / "README.md",
        REPO / "CHANGELOG.md",
        REPO / "bench" / "README.md",
        *(REPO / "docs").glob("*.md"),
    ]
)
PATH = re.compile(
    r"`(?:\.venv/bin/python )?((?:unlearn_core|pipelines|tests|bench|docs|tune_spaces|\.ci)/[\w/.-]+"
    r"\.(?:py|md|yaml)|Makefile|cluster\.yaml|pyproject\.toml|constraints-cpu\.txt|CHANGELOG\.md)\b"
)
MAX_README_LINES = 250


def _help_texts() -> list[str]:
    parser = build_parser()
    texts = [parser.format_help()]
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            for sub in (
                getattr(action, "choices", None).values()
                if isinstance(getattr(action, "choices", None), dict)
                else []
            ):
                texts.append(sub.format_help())
                stack.append(sub)
    return texts


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _code(text: str) -> list[str]:
    """The document's code: fenced blocks line by line (``\\``-continued lines joined) and inline spans."""
    blocks = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    lines = [ln for b in blocks for ln in re.sub(r"\\\n\s*", " ", b).splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return lines + inline


def _config_keys() -> set[str]:
    keys = set(flatten(RunConfig()))
    keys |= {f"method.params.{name}" for _, params in REGISTRY.values() for name in params.model_fields}
    return keys


def test_code_and_help_cite_nothing_outside_the_repository():
    sources = [
        p
        for d in ("unlearn_core", "pipelines", "bench", "tune_spaces")
        for p in (REPO / d).rglob("*")
        if p.suffix in (".py", ".yaml", ".md")
    ]
    cited = [
        f"{p.relative_to(REPO)}:{i}"
        for p in sources
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert cited == []
    helps = _help_texts()
    assert len(helps) > 10  # every subcommand's help was rendered
    assert not [h for h in helps if OUTSIDE.search(h)]


@pytest.mark.parametrize("doc", DOCS)
def test_files_the_docs_name_exist(doc: str):
    path = REPO / doc
    text = path.read_text()
    links = {(path.parent / m).resolve() for m in re.findall(r"\]\(([^)#:]+\.(?:md|py|yaml))\)", text)}
    named = {(REPO / m).resolve() for m in PATH.findall(text)}
    missing = sorted(str(p.relative_to(REPO)) for p in links | named if not p.exists())
    assert missing == []


@pytest.mark.parametrize("doc", DOCS)
def test_commands_flags_and_config_keys_the_docs_name_are_real(doc: str):
    """``unlearn`` subcommands and their flags, ``make`` targets, ``python -m`` modules and ``--set``
    keys named in the document's code exist."""
    parser = build_parser()
    commands = _subparsers(parser)
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    keys = _config_keys()
    wrong: list[str] = []
    for code in _code((REPO / doc).read_text()):
        for m in re.finditer(r"(?:^|[\s/(])unlearn\s+([a-z][\w-]*)((?:\s+[a-z][\w-]*)?)([^|;`]*)", code):
            name, second, rest = m.group(1), m.group(2).strip(), m.group(3)
            if name not in commands:
                wrong.append(f"unlearn {name}")
                continue
            sub = commands[name]
            if second and _subparsers(sub):
                if second not in _subparsers(sub):
                    wrong.append(f"unlearn {name} {second}")
                    continue
                sub = _subparsers(sub)[second]
            flags = {s for a in sub._actions for s in a.option_strings}
            wrong += [
                f"unlearn {name} {f}"
                for f in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest)
                if f not in flags
            ]
            for key in re.findall(r"--set\s+'?([a-z][\w.]*)=", rest):
                if key not in keys and not any(k.startswith(f"{key}.") for k in keys):
                    wrong.append(f"--set {key}")
        wrong += [f"make {t}" for t in re.findall(r"(?:^|\s)make\s+([a-z][\w-]*)", code) if t not in targets]
        for module in re.findall(r"python -m ((?:pipelines|unlearn_core)[\w.]*)", code):
            file = REPO / module.replace(".", "/")
            if not (file.with_suffix(".py").is_file() or (file / "__main__.py").is_file()):
                wrong.append(f"python -m {module}")
    assert wrong == []


def test_configuration_reference_is_generated_from_the_schema():
    """docs/configuration.md is what the schema says now: every field, its default, range and
    description (a field without a description fails, naming it)."""
    assert undocumented() == []
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == render(), f"docs/configuration.md is out of date: run `{COMMAND}`"
    assert all(f"| `{key}` |" in doc for key, *_ in schema_fields(RunConfig))


def test_readme_is_a_short_guide_without_dated_measurements():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    assert not re.findall(r"\b20\d\d-\d\d-\d\d\b", text)  # dates: CHANGELOG.md, docs/results.md
    assert not re.findall(r"`[0-9a-f]{7,12}`", text)  # commit hashes
    assert not re.findall(r"this machine|No GPU was lent", text, re.I)
