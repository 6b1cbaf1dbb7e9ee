"""The budgets file: parse and validate the admin's YAML into a `BudgetPolicy`.

Pure logic (stdlib + PyYAML). The file is read strictly (`yaml_nodes`): every problem names
its field path and line, duplicate and unknown keys are errors, and YAML 1.1's booleans,
quoted numbers and non-finite numbers are refused where a number belongs. Every problem in
a file is reported at once (`BudgetsError.problems`).
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from timekeeper.yaml_nodes import (
    Problem,
    describe,
    did_you_mean,
    is_null,
    line_of,
    mapping_entries,
    number,
    string,
)

PeriodKind: TypeAlias = Literal["day", "week", "month", "rolling"]
ExhaustedAction: TypeAlias = Literal["deprioritize", "deny", "throttle"]

UNLIMITED: Final = "unlimited"
ROLLING_MAX_DAYS: Final = 366
"""Longest rolling window: a year (leap or not) of 15-minute buckets."""

EXHAUSTED_ACTIONS: Final[tuple[ExhaustedAction, ...]] = ("deprioritize", "deny", "throttle")
DEFAULT_THROTTLE_PERCENT: Final = 10.0
"""`throttleToPercent` when not given: throttled containers keep a tenth of their share."""
CALENDAR_PERIODS: Final[tuple[PeriodKind, ...]] = ("day", "week", "month")

BUDGET_KEYS: Final = (
    "period",
    "timezone",
    "gpuHours",
    "warnAtPercent",
    "whenExhausted",
    "throttleToPercent",
    "maxVcudaCore",
    "maxVcudaMemory",
)
MAX_VCUDA_CORE_CAP: Final = 10_000_000
"""Largest `maxVcudaCore`: 100 000 whole GPUs, far beyond any cluster, small enough to catch
a typo."""
MAX_VCUDA_MEMORY_CAP: Final = 1_000_000_000
"""Largest `maxVcudaMemory` (units of 256 MiB): about 238 PiB."""
TOP_LEVEL_KEYS: Final = ("defaults", "namespaces")

_ROLLING_RE: Final = re.compile(r"rolling:([0-9]+)d")
_DNS1123_LABEL_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1123_LABEL_MAX: Final = 63


@dataclass(frozen=True)
class Period:
    """How a budget period is cut: calendar day/week/month, or the last N days."""

    kind: PeriodKind
    rolling_days: int | None = None
    """Only for `rolling`: the window length in days."""

    def __str__(self) -> str:
        return f"rolling:{self.rolling_days}d" if self.kind == "rolling" else self.kind


@dataclass(frozen=True)
class Budget:
    """One namespace's budget, fully resolved."""

    period: Period
    timezone: str
    """IANA time zone in which calendar periods start at local midnight."""
    gpu_hours: float | None
    """GPU-hours per period; None means unlimited."""
    warn_at_percent: float
    """The state is `warning` from this percentage of `gpu_hours` used (100: never warn)."""
    when_exhausted: ExhaustedAction
    throttle_to_percent: float = DEFAULT_THROTTLE_PERCENT
    """With `throttle`: the percent of its share each running shared container keeps."""
    max_vcuda_core: int | None = None
    """Cap on `tencent.com/vcuda-core` requested by the namespace's pods at once (a
    ResourceQuota); None: no cap."""
    max_vcuda_memory: int | None = None
    """Cap on `tencent.com/vcuda-memory` units (256 MiB) requested at once; None: no cap."""

    @property
    def has_quota(self) -> bool:
        """Whether this budget caps what the namespace holds at once."""
        return self.max_vcuda_core is not None or self.max_vcuda_memory is not None


@dataclass(frozen=True)
class BudgetPolicy:
    """The defaults and the budgets of the namespaces the file lists."""

    defaults: Budget
    namespaces: Mapping[str, Budget] = field(default_factory=lambda: MappingProxyType({}))
    """Namespace name to its budget, with the defaults already merged in."""

    def budget_for(self, namespace: str) -> Budget:
        """The budget of `namespace`: its own entry, or the defaults when it is not listed."""
        return self.namespaces.get(namespace, self.defaults)


class BudgetsError(ValueError):
    """A budgets file is invalid; `problems` holds every reason, each with its field path."""

    def __init__(self, details: tuple[Problem, ...]) -> None:
        self.details = details
        self.problems: tuple[str, ...] = tuple(str(problem) for problem in details)
        super().__init__("invalid budgets file: " + "; ".join(self.problems))


BUILTIN_DEFAULTS: Final = Budget(
    period=Period("month"),
    timezone="UTC",
    gpu_hours=None,
    warn_at_percent=80.0,
    when_exhausted="deprioritize",
)
"""What a key missing from `defaults` (or a missing file) means: monthly in UTC, unlimited."""

DEFAULT_POLICY: Final = BudgetPolicy(defaults=BUILTIN_DEFAULTS)
"""The policy when no budgets file is given: every namespace unlimited (usage is still kept)."""


def load_budgets(path: Path) -> BudgetPolicy:
    """Read and parse a budgets file; an unreadable file is a `BudgetsError` too."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise BudgetsError((Problem("(file)", f"cannot read {path}: {reason}"),)) from err
    return parse_budgets(text)


def parse_budgets(text: str) -> BudgetPolicy:
    """Parse budgets YAML; raise `BudgetsError` with every problem found.

    An empty file (or one holding only comments) is the built-in `DEFAULT_POLICY`; a missing
    `defaults` section means the built-in defaults; a missing `namespaces` section means none.
    """
    problems: list[Problem] = []
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        where = f" at line {line}, column {mark.column + 1}" if mark is not None else ""
        reason = err.problem or err.context or "syntax error"
        problem = Problem("(file)", f"not valid YAML: {reason}{where}", line)
        raise BudgetsError((problem,)) from err
    except yaml.YAMLError as err:
        raise BudgetsError((Problem("(file)", f"not valid YAML: {err}"),)) from err
    except RecursionError as err:
        raise BudgetsError((Problem("(file)", "not valid YAML: nested too deeply"),)) from err

    documents = [document for document in documents if document is not None]
    if not documents:
        return DEFAULT_POLICY
    if len(documents) > 1:
        line = documents[1].start_mark.line + 1
        raise BudgetsError(
            (Problem("(file)", f"must hold one YAML document (a second starts at line {line})"),)
        )
    root = documents[0]
    if is_null(root):
        return DEFAULT_POLICY
    if not isinstance(root, yaml.MappingNode):
        raise BudgetsError(
            (
                Problem(
                    "(file)",
                    "must be a mapping with the keys 'defaults' and 'namespaces' "
                    f"(got {describe(root)})",
                    line_of(root),
                ),
            )
        )

    sections = mapping_entries(root, "", problems, known_keys=TOP_LEVEL_KEYS)
    defaults = BUILTIN_DEFAULTS
    defaults_node = sections.get("defaults")
    if defaults_node is not None and not is_null(defaults_node[1]):
        defaults = _parse_budget(defaults_node[1], "defaults", BUILTIN_DEFAULTS, problems)

    namespaces: dict[str, Budget] = {}
    namespaces_node = sections.get("namespaces")
    if namespaces_node is not None and not is_null(namespaces_node[1]):
        node = namespaces_node[1]
        if not isinstance(node, yaml.MappingNode):
            problems.append(
                Problem(
                    "namespaces",
                    f"must be a mapping of namespace name to budget (got {describe(node)})",
                    line_of(node),
                )
            )
        else:
            for name, (key_node, value_node) in mapping_entries(
                node, "namespaces", problems, known_keys=None
            ).items():
                path = f"namespaces.{name}"
                name_problem = _namespace_name_problem(name)
                if name_problem is not None:
                    problems.append(Problem(path, name_problem, line_of(key_node)))
                if is_null(value_node):
                    namespaces[name] = defaults
                else:
                    namespaces[name] = _parse_budget(value_node, path, defaults, problems)

    if problems:
        raise BudgetsError(tuple(sorted(problems, key=lambda problem: problem.line or 0)))
    return BudgetPolicy(defaults=defaults, namespaces=MappingProxyType(namespaces))


def parse_period(text: str) -> Period:
    """`day`, `week`, `month` or `rolling:<N>d` (1 <= N <= 366); ValueError otherwise."""
    if text in CALENDAR_PERIODS:
        return Period(text)
    match = _ROLLING_RE.fullmatch(text)
    if match is None:
        raise ValueError(_PERIOD_RULE + did_you_mean(text, (*CALENDAR_PERIODS, "rolling:30d")))
    days = int(match.group(1))
    if not 1 <= days <= ROLLING_MAX_DAYS:
        raise ValueError(f"a rolling period must be 1 to {ROLLING_MAX_DAYS} days long")
    return Period("rolling", rolling_days=days)


_PERIOD_RULE: Final = "must be day, week, month or rolling:<N>d"
_GPU_HOURS_RULE: Final = "must be a number >= 0 or 'unlimited'"
_WARN_RULE: Final = "must be a number above 0 and at most 100"
_MAX_CORE_RULE: Final = (
    f"must be a whole number of tencent.com/vcuda-core units (100 = one GPU) in "
    f"0..{MAX_VCUDA_CORE_CAP}, or 'unlimited'"
)
_MAX_MEMORY_RULE: Final = (
    f"must be a whole number of tencent.com/vcuda-memory units (256 MiB each) in "
    f"0..{MAX_VCUDA_MEMORY_CAP}, or 'unlimited'"
)
_THROTTLE_RULE: Final = "must be a number above 0 and at most 100 (percent of each pod's share)"
_ACTION_RULE: Final = "must be deprioritize, deny or throttle"


def _parse_budget(node: yaml.Node, path: str, base: Budget, problems: list[Problem]) -> Budget:
    """One budget mapping over `base`: keys it does not set keep the value from `base`."""
    if not isinstance(node, yaml.MappingNode):
        problems.append(
            Problem(path, f"must be a mapping of budget keys (got {describe(node)})", line_of(node))
        )
        return base
    entries = mapping_entries(node, path, problems, known_keys=BUDGET_KEYS)
    period, timezone, gpu_hours = base.period, base.timezone, base.gpu_hours
    warn_at_percent, when_exhausted = base.warn_at_percent, base.when_exhausted
    throttle_to_percent = base.throttle_to_percent
    max_core, max_memory = base.max_vcuda_core, base.max_vcuda_memory

    for key, (_, value) in entries.items():
        field_path = f"{path}.{key}"
        try:
            if key == "period":
                period = parse_period(string(value, _PERIOD_RULE))
            elif key == "timezone":
                timezone = parse_timezone(string(value, "must be an IANA time zone name"))
            elif key == "gpuHours":
                gpu_hours = _parse_gpu_hours(value)
            elif key == "warnAtPercent":
                warn_at_percent = number(value, _WARN_RULE)
                if not 0 < warn_at_percent <= 100:
                    raise ValueError(_WARN_RULE)
            elif key == "whenExhausted":
                action = string(value, _ACTION_RULE)
                if action not in EXHAUSTED_ACTIONS:
                    raise ValueError(_ACTION_RULE + did_you_mean(action, EXHAUSTED_ACTIONS))
                when_exhausted = action
            elif key == "maxVcudaCore":
                max_core = _parse_cap(value, MAX_VCUDA_CORE_CAP, _MAX_CORE_RULE)
            elif key == "maxVcudaMemory":
                max_memory = _parse_cap(value, MAX_VCUDA_MEMORY_CAP, _MAX_MEMORY_RULE)
            elif key == "throttleToPercent":
                throttle_to_percent = number(value, _THROTTLE_RULE)
                if not 0 < throttle_to_percent <= 100:
                    raise ValueError(_THROTTLE_RULE)
        except ValueError as err:
            problems.append(Problem(field_path, f"{err} (got {describe(value)})", line_of(value)))
    return Budget(
        period,
        timezone,
        gpu_hours,
        warn_at_percent,
        when_exhausted,
        max_vcuda_core=max_core,
        max_vcuda_memory=max_memory,
        throttle_to_percent=throttle_to_percent,
    )


def parse_timezone(name: str) -> str:
    """`name` if it is an IANA zone an admin can mean (not `localtime`), else `ValueError`."""
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError("must be an IANA time zone name such as UTC or Europe/Berlin")
    known = _known_timezones()
    if name not in known:
        hint = did_you_mean(name, known) or did_you_mean(name.rpartition("/")[2], known)
        raise ValueError("unknown time zone; use an IANA name such as UTC or Europe/Berlin" + hint)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as err:
        raise ValueError(f"time zone data for {name} cannot be read ({err})") from err
    return name


@lru_cache(maxsize=1)
def _known_timezones() -> tuple[str, ...]:
    # `localtime` is the machine's own setting and `Factory` a placeholder: neither is a
    # zone an admin can mean, and `localtime` differs from host to host.
    return tuple(sorted(zoneinfo.available_timezones() - {"localtime", "Factory"}))


def _parse_gpu_hours(node: yaml.Node) -> float | None:
    if isinstance(node, yaml.ScalarNode) and node.value == UNLIMITED:
        return None
    if isinstance(node, yaml.ScalarNode) and node.value.lower() == UNLIMITED:
        raise ValueError(f"{_GPU_HOURS_RULE}; write 'unlimited' in lower case")
    hours = number(node, _GPU_HOURS_RULE)
    if hours < 0:
        raise ValueError(_GPU_HOURS_RULE)
    return hours


def _parse_cap(node: yaml.Node, maximum: int, rule: str) -> int | None:
    if isinstance(node, yaml.ScalarNode) and node.value == UNLIMITED:
        return None
    if isinstance(node, yaml.ScalarNode) and node.value.lower() == UNLIMITED:
        raise ValueError(f"{rule}; write 'unlimited' in lower case")
    value = number(node, rule)
    if value != int(value) or not 0 <= value <= maximum:
        raise ValueError(rule)
    return int(value)


def _namespace_name_problem(name: str) -> str | None:
    if len(name) > _DNS1123_LABEL_MAX or not _DNS1123_LABEL_RE.fullmatch(name):
        return (
            "not a valid namespace name: at most 63 characters of lower-case letters, digits "
            "and '-', starting and ending with a letter or digit (RFC 1123 label)"
        )
    return None
