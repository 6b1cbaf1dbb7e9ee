"""Reading the Helm chart's source without helm: values, template references, command lines.

The real helm renders and installs the chart in tests/cluster/test_chart.py; the checks that
compare the chart with the parts' own code read the template text instead, which needs no
binary and points at the template line. These functions read: which `.Values` paths a
template uses, which named templates it includes, which container command lines and
environment variables it writes.
Template expressions that are a plain values path (`{{ $nm.port }}`, `{{ .Values.x | quote }}`)
are resolved against values.yaml; anything else is left as the literal `TEMPLATED`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deployment" / "chart"
TEMPLATES = CHART / "templates"
HELPERS = TEMPLATES / "_helpers.tpl"
UNRESOLVED = "TEMPLATED"

_ACTION = re.compile(r"\{\{-?(.*?)-?\}\}", re.DOTALL)
_VALUES_PATH = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_ALIAS = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\s*:=\s*\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_ALIAS_USE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
_INCLUDE = re.compile(r"\b(?:include|template)\s+\"([^\"]+)\"")
_DEFINE = re.compile(r"\bdefine\s+\"([^\"]+)\"")
_CONTROL = re.compile(r"^\s*(?:if|else|end|with|range|define|fail|/\*|\$[A-Za-z_]\w*\s*:?=)")
_SIMPLE = re.compile(
    r"^\s*(\$[A-Za-z_][A-Za-z0-9_]*|\.Values)((?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r"((?:\s*\|\s*(?:quote|int|toString))*)\s*$"
)


def load_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(values, dict)
    return values


def template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.iterdir() if p.is_file())


def actions(text: str) -> list[str]:
    """The text inside every `{{ … }}` of a template."""
    return [match.group(1) for match in _ACTION.finditer(text)]


def aliases(text: str) -> dict[str, tuple[str, ...]]:
    """`$tk := .Values.timekeeper` → {"tk": ("timekeeper",)}."""
    return {
        match.group(1): tuple(match.group(2).strip(".").split("."))
        for match in _ALIAS.finditer(text)
    }


def values_references(text: str) -> set[tuple[str, ...]]:
    """Every values path a template uses, directly or through a `$alias := .Values.x`."""
    names = aliases(text)
    direct = _ALIAS.sub("", text)  # `$tk := .Values.timekeeper` alone uses nothing
    found = {tuple(m.group(1).strip(".").split(".")) for m in _VALUES_PATH.finditer(direct)}
    for action in actions(text):
        for match in _ALIAS_USE.finditer(action):
            base = names.get(match.group(1))
            if base is not None:
                found.add(base + tuple(match.group(2).strip(".").split(".")))
    return found


def includes(text: str) -> set[str]:
    return {name for action in actions(text) for name in _INCLUDE.findall(action)}


def defines(text: str) -> set[str]:
    return {name for action in actions(text) for name in _DEFINE.findall(action)}


def helper_bodies() -> dict[str, str]:
    """The text of every `define` in _helpers.tpl, by name."""
    text = HELPERS.read_text()
    bodies: dict[str, str] = {}
    for match in re.finditer(r"\{\{-?\s*define \"([^\"]+)\"\s*-?\}\}", text):
        depth = 1
        for action in _ACTION.finditer(text, match.end()):
            word = action.group(1).strip().split(" ", 1)[0]
            if word in ("if", "with", "range", "define"):
                depth += 1
            elif word == "end":
                depth -= 1
                if depth == 0:
                    bodies[match.group(1)] = text[match.end() : action.start()].strip("\n")
                    break
    return bodies


_NINDENT_INCLUDE = re.compile(r"\{\{-?\s*include \"([^\"]+)\" [^|}]*\|\s*nindent (\d+)\s*-?\}\}")


def expand_includes(text: str) -> str:
    """Write `{{- include "x" . | nindent N }}` out as the helper's text, indented by N."""
    bodies = helper_bodies()

    def expand(match: re.Match[str]) -> str:
        body = bodies.get(match.group(1))
        if body is None:
            return match.group(0)
        pad = " " * int(match.group(2))
        return "\n" + "\n".join(pad + line if line.strip() else line for line in body.splitlines())

    return _NINDENT_INCLUDE.sub(expand, text)


def lookup(values: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path`; KeyError naming the path when it is missing."""
    node: Any = values
    for depth, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise KeyError(".".join(path[: depth + 1]))
        node = node[key]
    return node


def resolve(text: str, values: Mapping[str, Any], names: Mapping[str, tuple[str, ...]]) -> str:
    """Replace each `{{ plain values path }}` by its default; other actions by TEMPLATED."""

    def replace(match: re.Match[str]) -> str:
        if _CONTROL.match(match.group(1)):
            return ""
        simple = _SIMPLE.match(match.group(1))
        if simple is None:
            return UNRESOLVED
        head, rest = simple.group(1), simple.group(2).strip(".")
        base = () if head == ".Values" else names.get(head[1:])
        if base is None:
            return UNRESOLVED
        path = base + (tuple(rest.split(".")) if rest else ())
        value = lookup(values, path)
        shown = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return json.dumps(shown) if "quote" in simple.group(3) else shown

    return _ACTION.sub(replace, text)


@dataclass
class Container:
    """One container of a template, as far as its text says."""

    template: str
    name: str
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)
    """volume name → mountPath"""

    @property
    def argv(self) -> list[str]:
        return self.command + self.args


def _items(lines: list[str], start: int, indent: int) -> Iterator[tuple[int, str]]:
    """Lines after `start` indented deeper than `indent` (template-only lines skipped)."""
    for number in range(start + 1, len(lines)):
        line = lines[number]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if (
            stripped.startswith("{{")
            and stripped.endswith("}}")
            and _ACTION.sub("", stripped) == ""
        ):
            continue  # a control line such as {{- if … }} or {{- end }}
        if len(line) - len(line.lstrip()) <= indent:
            return
        yield number, line


def _list_value(lines: list[str], number: int, key: str) -> list[str]:
    """A YAML list under `key:` on line `number`: flow (`[a, b]`) or block (`- a`)."""
    line = lines[number]
    rest = line.split(f"{key}:", 1)[1].strip()
    if rest:
        parsed = yaml.safe_load(rest)
        assert isinstance(parsed, list), f"{key}: expected a list on {line!r}"
        return [str(item) for item in parsed]
    indent = len(line) - len(line.lstrip())
    items: list[str] = []
    for _, item in _items(lines, number, indent):
        stripped = item.strip()
        if stripped.startswith("- "):
            items.append(str(yaml.safe_load(stripped[2:])))
    return items


def _env(lines: list[str], number: int) -> dict[str, str]:
    indent = len(lines[number]) - len(lines[number].lstrip())
    env: dict[str, str] = {}
    pending: str | None = None
    for _, item in _items(lines, number, indent):
        stripped = item.strip()
        if stripped.startswith("- {"):
            entry = yaml.safe_load(stripped[2:])
            env[entry["name"]] = str(entry.get("value", UNRESOLVED))
        elif stripped.startswith("- name:"):
            pending = stripped.split(":", 1)[1].strip()
            env[pending] = UNRESOLVED
        elif stripped.startswith("value:") and pending is not None:
            env[pending] = str(yaml.safe_load(stripped.split(":", 1)[1].strip()))
    return env


def _mounts(lines: list[str], number: int) -> dict[str, str]:
    indent = len(lines[number]) - len(lines[number].lstrip())
    mounts: dict[str, str] = {}
    name: str | None = None
    for _, item in _items(lines, number, indent):
        stripped = item.strip()
        if stripped.startswith("- {"):
            entry = yaml.safe_load(stripped[2:])
            mounts[entry["name"]] = entry["mountPath"]
        elif stripped.startswith("- name:"):
            name = stripped.split(":", 1)[1].strip()
        elif stripped.startswith("mountPath:") and name is not None:
            mounts[name] = stripped.split(":", 1)[1].strip()
    return mounts


def containers(path: Path, values: Mapping[str, Any]) -> list[Container]:
    """Every container and init container of a template, values paths resolved."""
    raw = expand_includes(path.read_text())
    text = resolve(raw, values, aliases(raw))
    lines = text.splitlines()
    found: list[Container] = []
    current: Container | None = None
    current_indent = -1
    for number, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("- name:") and (
            stripped.startswith("- name:") and _is_container_list(lines, number)
        ):
            current = Container(path.name, stripped.split(":", 1)[1].strip())
            current_indent = indent
            found.append(current)
            continue
        if current is None or indent <= current_indent:
            if current is not None and stripped and indent <= current_indent:
                current = None
            continue
        if indent != current_indent + 2:
            continue
        if stripped.startswith("command:"):
            current.command = _list_value(lines, number, "command")
        elif stripped.startswith("args:"):
            current.args = _list_value(lines, number, "args")
        elif stripped.startswith("env:"):
            current.env = _env(lines, number)
        elif stripped.startswith("volumeMounts:"):
            current.mounts = _mounts(lines, number)
    return found


def _is_container_list(lines: list[str], number: int) -> bool:
    """Whether the list item on line `number` sits under `containers:`/`initContainers:`."""
    indent = len(lines[number]) - len(lines[number].lstrip())
    for previous in range(number - 1, -1, -1):
        line = lines[previous]
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("{{"):
            continue
        if len(line) - len(line.lstrip()) < indent:
            return stripped in ("containers:", "initContainers:")
    return False
