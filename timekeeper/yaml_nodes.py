"""Strict reading of YAML node trees, for configuration files that must name every mistake.

Works on the node tree (`yaml.compose`) rather than on Python values, so that every value
keeps its line and its text as written, duplicate keys are seen, and scalars are typed by
explicit rules instead of YAML 1.1's surprises: `yes`/`no`/`on`/`off` are booleans (refused
where a number belongs), a quoted `"10"` is a string, `1:30` is not a number, and `.nan` /
`.inf` are numbers but not finite ones.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import yaml

# YAML 1.2 core-schema numbers (plus `_` digit separators, which YAML 1.1 allows).
_INT_RE: Final = re.compile(r"[-+]?[0-9][0-9_]*")
_FLOAT_RE: Final = re.compile(r"[-+]?(\.[0-9][0-9_]*|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?")
_NONFINITE_RE: Final = re.compile(r"[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")
_BOOL_WORDS: Final = frozenset(
    {"true", "false", "yes", "no", "on", "off", "y", "n"}
)  # compared case-insensitively: YAML 1.1 reads all of these as booleans
_NULL_WORDS: Final = frozenset({"", "~", "null", "Null", "NULL"})
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class Problem:
    """One reason a configuration file is invalid."""

    path: str
    """Field path, e.g. `namespaces.interns.gpuHours` (`(file)` for the whole file)."""
    message: str
    line: int | None = None
    """1-based line of the offending value, when known."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def number(node: yaml.Node, rule: str) -> float:
    """A finite number from a plain scalar; ValueError naming `rule` (and why) otherwise."""
    if not isinstance(node, yaml.ScalarNode):
        raise ValueError(rule)
    text = node.value
    if node.style is not None:  # quoted: a string, even when it looks like a number
        if _INT_RE.fullmatch(text) or _FLOAT_RE.fullmatch(text):
            raise ValueError(f"{rule}; write the number without quotes")
        raise ValueError(rule)
    if text.lower() in _BOOL_WORDS:
        raise ValueError(f"{rule}; YAML reads {text} as a boolean")
    if _NONFINITE_RE.fullmatch(text):
        raise ValueError(f"{rule}; it must be finite")
    if _INT_RE.fullmatch(text) or _FLOAT_RE.fullmatch(text):
        value = float(text.replace("_", ""))
        if not math.isfinite(value):
            raise ValueError(f"{rule}; it must be finite")
        return value
    raise ValueError(rule)


def string(node: yaml.Node, rule: str) -> str:
    """A scalar's text (quoted or not); ValueError naming `rule` for nothing or a collection."""
    if not isinstance(node, yaml.ScalarNode) or (node.style is None and node.value in _NULL_WORDS):
        raise ValueError(rule)
    return str(node.value)


def mapping_entries(
    node: yaml.MappingNode,
    path: str,
    problems: list[Problem],
    *,
    known_keys: tuple[str, ...] | None,
    _seen: dict[int, dict[str, tuple[yaml.Node, yaml.Node]] | None] | None = None,
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """The entries of a mapping by key text, after YAML merge keys (`<<`).

    Reports duplicate keys, keys that are not scalars and (when `known_keys` is given)
    unknown keys, with a "did you mean" hint for near misses. Each merged mapping is read
    once (`_seen`), so nested merges cost linear time and a mapping that merges itself is an
    error rather than endless recursion.
    """
    seen = {} if _seen is None else _seen
    seen[id(node)] = None  # in progress
    own: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    prefix = f"{path}." if path else ""
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            for source in merge_sources(value_node, path, problems):
                if id(source) in seen and seen[id(source)] is None:
                    problems.append(
                        Problem(
                            prefix + "<<",
                            "a merge key must not refer to the mapping it is in",
                            line_of(key_node),
                        )
                    )
                    continue
                entries = seen.get(id(source))
                if entries is None:
                    entries = mapping_entries(
                        source, path, problems, known_keys=known_keys, _seen=seen
                    )
                for key, entry in entries.items():
                    merged.setdefault(key, entry)
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append(
                Problem(
                    path or "(file)",
                    f"keys must be plain names (got {describe(key_node)})",
                    line_of(key_node),
                )
            )
            continue
        key = str(key_node.value)
        if key in own:
            first = line_of(own[key][0])
            problems.append(
                Problem(
                    prefix + key,
                    f"duplicate key (first on line {first}, again on line {line_of(key_node)})",
                    line_of(key_node),
                )
            )
            continue
        if known_keys is not None and key not in known_keys:
            problems.append(
                Problem(
                    prefix + key,
                    "unknown key"
                    + (did_you_mean(key, known_keys) or f"; known keys: {', '.join(known_keys)}"),
                    line_of(key_node),
                )
            )
            continue
        own[key] = (key_node, value_node)
    result = {**merged, **own}
    seen[id(node)] = result
    return result


def merge_sources(
    node: yaml.Node, path: str, problems: list[Problem]
) -> Iterator[yaml.MappingNode]:
    """The mappings a `<<` merge key names: one mapping, or a list of mappings."""
    candidates = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for candidate in candidates:
        if isinstance(candidate, yaml.MappingNode):
            yield candidate
        else:
            problems.append(
                Problem(
                    f"{path}.<<" if path else "<<",
                    f"a merge key takes a mapping or a list of mappings (got {describe(node)})",
                    line_of(node),
                )
            )


def did_you_mean(text: str, choices: tuple[str, ...]) -> str:
    lowered = {choice.lower(): choice for choice in choices}
    if text.lower() in lowered:
        return f"; did you mean '{lowered[text.lower()]}'?"
    matches = difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else ""


def is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.style is None and node.value in _NULL_WORDS


def line_of(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def describe(node: yaml.Node) -> str:
    """How a value appears in messages: strings quoted, other scalars as written."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if not isinstance(node, yaml.ScalarNode):
        return "a list"
    if is_null(node):
        return "nothing"
    text = str(node.value)
    if len(text) > 60:
        text = text[:57] + "..."
    if node.style is not None or not (
        _INT_RE.fullmatch(text)
        or _FLOAT_RE.fullmatch(text)
        or _NONFINITE_RE.fullmatch(text)
        or text.lower() in _BOOL_WORDS
    ):
        return repr(text)
    return text
