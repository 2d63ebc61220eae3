"""Limits on untrusted input, checked before the work that would blow up on it.

Each limit, its default and the environment variable that changes it (read when used):

==========================  =================================  ===================================
limit                       default                            variable
==========================  =================================  ===================================
YAML nodes after aliases    10,000 (a config has ~100)         ``UNLEARN_MAX_YAML_NODES``
YAML file size              1 MiB                              ``UNLEARN_MAX_YAML_BYTES``
JSON nesting depth          64 levels                          ``UNLEARN_MAX_JSON_DEPTH``
one JSONL line              16 MiB                             ``UNLEARN_MAX_LINE_BYTES``
pixels of one image         50,000,000 (150 MB decoded RGB)    ``UNLEARN_MAX_IMAGE_PIXELS``
==========================  =================================  ===================================

A YAML file over its bounds is refused (``ConfigError``) before it is validated: PyYAML shares an
aliased node, so a 400-byte "billion laughs" loads at once and only explodes when walked; its size is
counted on the node graph (each distinct node once), and recursive aliases are refused. A JSON text
too deep or a line too long is a row-level problem (quarantined or counted by the caller), never a
``RecursionError``; an image over the pixel limit is quarantined from its header, before decoding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import IO, Any

import yaml

from unlearn_core.config import ConfigError

DEFAULTS = {
    "UNLEARN_MAX_YAML_NODES": 10_000,
    "UNLEARN_MAX_YAML_BYTES": 1 << 20,
    "UNLEARN_MAX_JSON_DEPTH": 64,
    "UNLEARN_MAX_LINE_BYTES": 16 << 20,
    "UNLEARN_MAX_IMAGE_PIXELS": 50_000_000,
}


def limit(name: str) -> int:
    """The limit ``name`` (a key of ``DEFAULTS``): the environment's value, else the default."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULTS[name]
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={raw!r}: expected a positive integer (default {DEFAULTS[name]})")
    return value


class InputTooLarge(ValueError):
    """A JSON text or a line over its bound; the message is the quarantine reason."""


# -------------------------------------------------------------------------------------------- YAML


def load_yaml(text: str | bytes, where: str) -> Any:
    """``yaml.safe_load`` with the size and alias bounds above; ``where`` names the file in errors.
    Syntax errors stay ``yaml.YAMLError`` (callers already name the file for those)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    max_bytes = limit("UNLEARN_MAX_YAML_BYTES")
    if len(text) > max_bytes:
        raise ConfigError(
            f"{where}: {len(text)} characters, over the {max_bytes} allowed (UNLEARN_MAX_YAML_BYTES)"
        )
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root: yaml.Node, where: str) -> None:
    """Nodes of the document with every alias expanded, counted on the shared graph (each distinct node
    once, so a billion laughs costs its few dozen nodes); over the limit or recursive: ConfigError."""
    cap = limit("UNLEARN_MAX_YAML_NODES")
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size[key] = min(cap + 1, 1 + sum(size[id(c)] for c in _children(node)))
            if size[key] > cap:
                line = node.start_mark.line + 1
                raise ConfigError(
                    f"{where}: line {line}: YAML aliases expand to more than {cap} values (a config holds "
                    "a few hundred); refused before reading it. Write the values out, or raise "
                    "UNLEARN_MAX_YAML_NODES"
                )
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(f"{where}: line {node.start_mark.line + 1}: a YAML alias refers to itself")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


# -------------------------------------------------------------------------------------------- JSON


def json_depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            deepest = max(deepest, depth + 1)
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
            deepest = max(deepest, depth + 1)
    return deepest


def load_json_text(text: str | bytes, *, max_bytes: int | None = -1) -> Any:
    """``json.loads`` that never raises ``RecursionError`` nor an unexpected ``ValueError`` subclass:
    a text over ``max_bytes`` (-1: the line limit; None: no size bound), nested deeper than the depth
    limit, with a number Python refuses (over 4,300 digits) or invalid raises ``InputTooLarge`` or
    ``json.JSONDecodeError`` / ``ValueError`` whose message is the reason."""
    bound = limit("UNLEARN_MAX_LINE_BYTES") if max_bytes == -1 else max_bytes
    if bound is not None and len(text) > bound:
        raise InputTooLarge(f"{len(text)} bytes, over the {bound} allowed (UNLEARN_MAX_LINE_BYTES)")
    depth_cap = limit("UNLEARN_MAX_JSON_DEPTH")
    try:
        value = json.loads(text)
    except RecursionError:
        raise InputTooLarge(f"JSON nested deeper than {depth_cap} levels (UNLEARN_MAX_JSON_DEPTH)") from None
    except json.JSONDecodeError:
        raise
    except ValueError as err:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise ValueError(f"a JSON number Python cannot read ({str(err).split(';')[0]})") from None
    if json_depth(value) > depth_cap:
        raise InputTooLarge(f"JSON nested deeper than {depth_cap} levels (UNLEARN_MAX_JSON_DEPTH)")
    return value


# ------------------------------------------------------------------------------------------- lines


def iter_lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes | None, int]]:
    """``(line number, the line's bytes, its size)`` for each line of a binary file; a line over the line
    limit is never held in memory: it comes as ``(number, None, size)`` after being read past."""
    cap = limit("UNLEARN_MAX_LINE_BYTES")
    number = 0
    while True:
        raw = handle.readline(cap + 1)
        if not raw:
            return
        number += 1
        if len(raw) <= cap or raw.endswith(b"\n"):
            yield number, raw, len(raw)
            continue
        size = len(raw)
        while raw and not raw.endswith(b"\n"):  # the rest of the long line, chunk by chunk
            raw = handle.readline(1 << 20)
            size += len(raw)
        yield number, None, size


def line_too_long(size: int) -> str:
    return f"line: {size} bytes, over the {limit('UNLEARN_MAX_LINE_BYTES')} allowed (UNLEARN_MAX_LINE_BYTES)"


# ------------------------------------------------------------------------------------------ images


def pixels_problem(width: int, height: int) -> str | None:
    """None when an image of ``width`` x ``height`` is within the pixel limit, else the reason."""
    cap = limit("UNLEARN_MAX_IMAGE_PIXELS")
    if width * height <= cap:
        return None
    return (
        f"{width} x {height} = {width * height:,} pixels, over the limit of {cap:,} "
        "(UNLEARN_MAX_IMAGE_PIXELS); refused before decoding"
    )
