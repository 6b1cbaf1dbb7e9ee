"""The budgets file: every rule, every error message, as case tables (full input, full output)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from timekeeper.budgets import (
    BUDGET_KEYS,
    BUILTIN_DEFAULTS,
    DEFAULT_POLICY,
    Budget,
    BudgetPolicy,
    BudgetsError,
    Period,
    load_budgets,
    parse_budgets,
)

LONGEST_NAME = "a" + "-b" * 30 + "c0"  # 63 characters
MONTH_UTC_100 = Budget(Period("month"), "UTC", 100.0, 80.0, "deprioritize")


def policy(defaults: Budget, **namespaces: Budget) -> BudgetPolicy:
    return BudgetPolicy(defaults=defaults, namespaces=MappingProxyType(dict(namespaces)))


DESIGN_EXAMPLE = """\
defaults:
  period: month                 # day | week | month | rolling:<N>d
  timezone: UTC                 # IANA name; calendar periods start at local midnight
  gpuHours: 100                 # a number, or "unlimited"
  warnAtPercent: 80             # state becomes "warning" from here
  whenExhausted: deprioritize   # deprioritize (lower PriorityClass) | deny (refuse new GPU pods)
namespaces:                     # namespaces not listed get the defaults
  team-a: {gpuHours: 500}
  interns: {gpuHours: 10, whenExhausted: deny}
  research: {gpuHours: unlimited}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            DESIGN_EXAMPLE,
            policy(
                MONTH_UTC_100,
                **{
                    "team-a": Budget(Period("month"), "UTC", 500.0, 80.0, "deprioritize"),
                    "interns": Budget(Period("month"), "UTC", 10.0, 80.0, "deny"),
                    "research": Budget(Period("month"), "UTC", None, 80.0, "deprioritize"),
                },
            ),
            id="design-example",
        ),
        pytest.param("", DEFAULT_POLICY, id="empty-file-is-builtin-default"),
        pytest.param("# nothing yet\n", DEFAULT_POLICY, id="comments-only-is-builtin-default"),
        pytest.param("---\n...\n", DEFAULT_POLICY, id="empty-document-is-builtin-default"),
        pytest.param("~\n", DEFAULT_POLICY, id="null-document-is-builtin-default"),
        pytest.param("defaults:\nnamespaces:\n", DEFAULT_POLICY, id="empty-sections"),
        pytest.param(
            "namespaces:\n  team-a: {gpuHours: 5}\n",
            policy(
                BUILTIN_DEFAULTS,
                **{"team-a": Budget(Period("month"), "UTC", 5.0, 80.0, "deprioritize")},
            ),
            id="no-defaults-section-uses-builtin-defaults",
        ),
        pytest.param(
            "defaults: {gpuHours: 7, timezone: Europe/Berlin}\n",
            policy(Budget(Period("month"), "Europe/Berlin", 7.0, 80.0, "deprioritize")),
            id="partial-defaults-filled-from-builtin",
        ),
        pytest.param(
            "defaults: {gpuHours: 7, period: week}\nnamespaces:\n  team-a:\n  team-b: {}\n",
            policy(
                Budget(Period("week"), "UTC", 7.0, 80.0, "deprioritize"),
                **{
                    "team-a": Budget(Period("week"), "UTC", 7.0, 80.0, "deprioritize"),
                    "team-b": Budget(Period("week"), "UTC", 7.0, 80.0, "deprioritize"),
                },
            ),
            id="listed-namespace-without-keys-gets-defaults",
        ),
        pytest.param(
            "defaults:\n  period: rolling:7d\n  gpuHours: 12.5\n  warnAtPercent: 100\n"
            "  whenExhausted: deny\n  timezone: Asia/Kathmandu\n",
            policy(Budget(Period("rolling", 7), "Asia/Kathmandu", 12.5, 100.0, "deny")),
            id="every-key-rolling-no-warning",
        ),
        pytest.param(
            "defaults: {period: day, gpuHours: 0, warnAtPercent: 0.5}\n",
            policy(Budget(Period("day"), "UTC", 0.0, 0.5, "deprioritize")),
            id="zero-hours-and-fractional-percent",
        ),
        pytest.param(
            "defaults: {period: 'rolling:366d', gpuHours: 1e3}\n",
            policy(Budget(Period("rolling", 366), "UTC", 1000.0, 80.0, "deprioritize")),
            id="rolling-366d-and-exponent-number",
        ),
        pytest.param(
            "defaults: {gpuHours: 5, whenExhausted: throttle}\n"
            "namespaces:\n  team-a: {throttleToPercent: 25}\n",
            policy(
                Budget(Period("month"), "UTC", 5.0, 80.0, "throttle"),
                **{"team-a": Budget(Period("month"), "UTC", 5.0, 80.0, "throttle", 25.0)},
            ),
            id="throttle-with-default-and-own-floor",
        ),
        pytest.param(
            "defaults: {gpuHours: 10_000}\n",
            policy(Budget(Period("month"), "UTC", 10000.0, 80.0, "deprioritize")),
            id="underscore-digit-separators",
        ),
        pytest.param(
            "defaults: {gpuHours: 'unlimited'}\n",
            policy(Budget(Period("month"), "UTC", None, 80.0, "deprioritize")),
            id="quoted-unlimited",
        ),
        pytest.param(
            "defaults: &d {gpuHours: 3, whenExhausted: deny}\n"
            "namespaces:\n  team-a: {<<: *d, gpuHours: 9}\n  team-b: *d\n",
            policy(
                Budget(Period("month"), "UTC", 3.0, 80.0, "deny"),
                **{
                    "team-a": Budget(Period("month"), "UTC", 9.0, 80.0, "deny"),
                    "team-b": Budget(Period("month"), "UTC", 3.0, 80.0, "deny"),
                },
            ),
            id="anchors-aliases-and-merge-keys",
        ),
        pytest.param(
            "namespaces:\n  '0': {}\n  yes: {}\n  " + LONGEST_NAME + ": {}\n",
            policy(
                BUILTIN_DEFAULTS,
                **{
                    "0": BUILTIN_DEFAULTS,
                    "yes": BUILTIN_DEFAULTS,
                    LONGEST_NAME: BUILTIN_DEFAULTS,
                },
            ),
            id="namespace-names-read-as-written",
        ),
    ],
)
def test_valid_files(text: str, expected: BudgetPolicy) -> None:
    parsed = parse_budgets(text)
    assert parsed.defaults == expected.defaults
    assert dict(parsed.namespaces) == dict(expected.namespaces)


TZ_RULE = "unknown time zone; use an IANA name such as UTC or Europe/Berlin"
GPU_HOURS_RULE = "must be a number >= 0 or 'unlimited'"
DNS_RULE = (
    "not a valid namespace name: at most 63 characters of lower-case letters, digits and '-', "
    "starting and ending with a letter or digit (RFC 1123 label)"
)


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        pytest.param(
            "namespaces:\n  interns: {gpuHours: ten}\n",
            (f"namespaces.interns.gpuHours: {GPU_HOURS_RULE} (got 'ten')",),
            id="gpuhours-word",
        ),
        pytest.param(
            "defaults: {gpuHours: -1}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE} (got -1)",),
            id="gpuhours-negative",
        ),
        pytest.param(
            "defaults: {gpuHours: yes}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE}; YAML reads yes as a boolean (got yes)",),
            id="gpuhours-yaml11-boolean",
        ),
        pytest.param(
            "defaults: {gpuHours: True}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE}; YAML reads True as a boolean (got True)",),
            id="gpuhours-boolean",
        ),
        pytest.param(
            "defaults: {gpuHours: '10'}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE}; write the number without quotes (got '10')",),
            id="gpuhours-quoted-number",
        ),
        pytest.param(
            "defaults: {gpuHours: .inf}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE}; it must be finite (got .inf)",),
            id="gpuhours-infinite",
        ),
        pytest.param(
            "defaults: {gpuHours: -.INF}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE}; it must be finite (got -.INF)",),
            id="gpuhours-negative-infinite",
        ),
        pytest.param(
            "defaults: {gpuHours: .NaN}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE}; it must be finite (got .NaN)",),
            id="gpuhours-nan",
        ),
        pytest.param(
            "defaults: {gpuHours: 1e999}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE}; it must be finite (got 1e999)",),
            id="gpuhours-overflows-to-infinity",
        ),
        pytest.param(
            "defaults: {gpuHours: Unlimited}\n",
            (
                f"defaults.gpuHours: {GPU_HOURS_RULE}; write 'unlimited' in lower case "
                "(got 'Unlimited')",
            ),
            id="gpuhours-unlimited-capitalised",
        ),
        pytest.param(
            "defaults: {gpuHours: }\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE} (got nothing)",),
            id="gpuhours-empty",
        ),
        pytest.param(
            "defaults: {gpuHours: [1]}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE} (got a list)",),
            id="gpuhours-list",
        ),
        pytest.param(
            "defaults: {gpuHours: 1:30}\n",
            (f"defaults.gpuHours: {GPU_HOURS_RULE} (got '1:30')",),
            id="gpuhours-yaml11-sexagesimal",
        ),
        pytest.param(
            "defaults: {period: monthly}\n",
            (
                "defaults.period: must be day, week, month or rolling:<N>d; "
                "did you mean 'month'? (got 'monthly')",
            ),
            id="period-monthly",
        ),
        pytest.param(
            "defaults: {period: Week}\n",
            (
                "defaults.period: must be day, week, month or rolling:<N>d; "
                "did you mean 'week'? (got 'Week')",
            ),
            id="period-capitalised",
        ),
        pytest.param(
            "defaults: {period: 'rolling:7'}\n",
            (
                "defaults.period: must be day, week, month or rolling:<N>d; "
                "did you mean 'rolling:30d'? (got 'rolling:7')",
            ),
            id="period-rolling-without-unit",
        ),
        pytest.param(
            "defaults: {period: 'rolling:0d'}\n",
            ("defaults.period: a rolling period must be 1 to 366 days long (got 'rolling:0d')",),
            id="period-rolling-zero",
        ),
        pytest.param(
            "defaults: {period: 'rolling:367d'}\n",
            ("defaults.period: a rolling period must be 1 to 366 days long (got 'rolling:367d')",),
            id="period-rolling-too-long",
        ),
        pytest.param(
            "defaults: {period: 7}\n",
            ("defaults.period: must be day, week, month or rolling:<N>d (got 7)",),
            id="period-number",
        ),
        pytest.param(
            "defaults: {timezone: Europe/Berln}\n",
            (f"defaults.timezone: {TZ_RULE}; did you mean 'Europe/Berlin'? (got 'Europe/Berln')",),
            id="timezone-typo",
        ),
        pytest.param(
            "defaults: {timezone: america/new_york}\n",
            (
                f"defaults.timezone: {TZ_RULE}; did you mean 'America/New_York'? "
                "(got 'america/new_york')",
            ),
            id="timezone-lower-case",
        ),
        pytest.param(
            "defaults: {timezone: Kathmandu}\n",
            (f"defaults.timezone: {TZ_RULE}; did you mean 'Asia/Kathmandu'? (got 'Kathmandu')",),
            id="timezone-city-only",
        ),
        pytest.param(
            "defaults: {timezone: localtime}\n",
            (f"defaults.timezone: {TZ_RULE} (got 'localtime')",),
            id="timezone-machine-localtime",
        ),
        pytest.param(
            "defaults: {timezone: Mars/Olympus_Mons}\n",
            (f"defaults.timezone: {TZ_RULE} (got 'Mars/Olympus_Mons')",),
            id="timezone-unknown",
        ),
        pytest.param(
            "defaults: {timezone: ../../etc/passwd}\n",
            (
                "defaults.timezone: must be an IANA time zone name such as UTC or "
                "Europe/Berlin (got '../../etc/passwd')",
            ),
            id="timezone-path",
        ),
        pytest.param(
            "defaults: {timezone: }\n",
            ("defaults.timezone: must be an IANA time zone name (got nothing)",),
            id="timezone-empty",
        ),
        pytest.param(
            "defaults: {warnAtPercent: 0}\n",
            ("defaults.warnAtPercent: must be a number above 0 and at most 100 (got 0)",),
            id="warn-zero",
        ),
        pytest.param(
            "defaults: {warnAtPercent: 100.5}\n",
            ("defaults.warnAtPercent: must be a number above 0 and at most 100 (got 100.5)",),
            id="warn-above-100",
        ),
        pytest.param(
            "defaults: {warnAtPercent: 80%}\n",
            ("defaults.warnAtPercent: must be a number above 0 and at most 100 (got '80%')",),
            id="warn-with-percent-sign",
        ),
        pytest.param(
            "defaults: {warnAtPercent: off}\n",
            (
                "defaults.warnAtPercent: must be a number above 0 and at most 100; "
                "YAML reads off as a boolean (got off)",
            ),
            id="warn-boolean-off",
        ),
        pytest.param(
            "defaults: {whenExhausted: throttle, throttleToPercent: 0}\n",
            (
                "defaults.throttleToPercent: must be a number above 0 and at most 100"
                " (percent of each pod's share) (got 0)",
            ),
            id="throttle-floor-zero",
        ),
        pytest.param(
            "defaults: {whenExhausted: reject}\n",
            ("defaults.whenExhausted: must be deprioritize, deny or throttle (got 'reject')",),
            id="action-unknown",
        ),
        pytest.param(
            "defaults: {whenExhausted: deprioritise}\n",
            (
                "defaults.whenExhausted: must be deprioritize, deny or throttle; "
                "did you mean 'deprioritize'? (got 'deprioritise')",
            ),
            id="action-british-spelling",
        ),
        pytest.param(
            "defaults: {gpuHour: 3}\n",
            ("defaults.gpuHour: unknown key; did you mean 'gpuHours'?",),
            id="unknown-key-typo",
        ),
        pytest.param(
            "namespaces:\n  team-a: {gpuhours: 3}\n",
            ("namespaces.team-a.gpuhours: unknown key; did you mean 'gpuHours'?",),
            id="unknown-key-case",
        ),
        pytest.param(
            "namespaces:\n  team-a: {priority: 3}\n",
            (
                "namespaces.team-a.priority: unknown key; known keys: period, timezone, "
                "gpuHours, warnAtPercent, whenExhausted, throttleToPercent, maxVcudaCore, "
                "maxVcudaMemory",
            ),
            id="unknown-key-unrelated",
        ),
        pytest.param(
            "namespace:\n  team-a: {gpuHours: 3}\n",
            ("namespace: unknown key; did you mean 'namespaces'?",),
            id="unknown-top-level-key",
        ),
        pytest.param(
            "namespaces:\n  team-a: {gpuHours: 1}\n  team-a: {gpuHours: 2}\n",
            ("namespaces.team-a: duplicate key (first on line 2, again on line 3)",),
            id="duplicate-namespace",
        ),
        pytest.param(
            "defaults:\n  gpuHours: 1\n  gpuHours: 2\n",
            ("defaults.gpuHours: duplicate key (first on line 2, again on line 3)",),
            id="duplicate-budget-key",
        ),
        pytest.param(
            "defaults: {}\ndefaults: {}\n",
            ("defaults: duplicate key (first on line 1, again on line 2)",),
            id="duplicate-section",
        ),
        pytest.param(
            "namespaces:\n  Team_A: {gpuHours: 1}\n",
            (f"namespaces.Team_A: {DNS_RULE}",),
            id="namespace-not-dns-label",
        ),
        pytest.param(
            "namespaces:\n  -team: {}\n",
            (f"namespaces.-team: {DNS_RULE}",),
            id="namespace-leading-dash",
        ),
        pytest.param(
            "namespaces:\n  " + "a" * 64 + ": {}\n",
            (f"namespaces.{'a' * 64}: {DNS_RULE}",),
            id="namespace-64-characters",
        ),
        pytest.param(
            "namespaces:\n  Bad: {gpuHours: ten}\n",
            (
                f"namespaces.Bad: {DNS_RULE}",
                f"namespaces.Bad.gpuHours: {GPU_HOURS_RULE} (got 'ten')",
            ),
            id="bad-name-body-still-checked",
        ),
        pytest.param(
            "namespaces:\n  ? [a, b]\n  : {}\n",
            ("namespaces: keys must be plain names (got a list)",),
            id="namespace-key-not-scalar",
        ),
        pytest.param(
            "namespaces: [team-a]\n",
            ("namespaces: must be a mapping of namespace name to budget (got a list)",),
            id="namespaces-a-list",
        ),
        pytest.param(
            "namespaces:\n  team-a: 500\n",
            ("namespaces.team-a: must be a mapping of budget keys (got 500)",),
            id="namespace-budget-a-number",
        ),
        pytest.param(
            "defaults: month\n",
            ("defaults: must be a mapping of budget keys (got 'month')",),
            id="defaults-a-string",
        ),
        pytest.param(
            "- defaults\n",
            ("(file): must be a mapping with the keys 'defaults' and 'namespaces' (got a list)",),
            id="file-a-list",
        ),
        pytest.param(
            "hello\n",
            ("(file): must be a mapping with the keys 'defaults' and 'namespaces' (got 'hello')",),
            id="file-a-string",
        ),
        pytest.param(
            "defaults: {gpuHours: 1\n",
            (
                "(file): not valid YAML: expected ',' or '}', but got '<stream end>' "
                "at line 2, column 1",
            ),
            id="yaml-syntax-error",
        ),
        pytest.param(
            "defaults: {}\n---\nnamespaces: {}\n",
            ("(file): must hold one YAML document (a second starts at line 3)",),
            id="two-documents",
        ),
        pytest.param(
            "defaults: {<<: 5}\n",
            ("defaults.<<: a merge key takes a mapping or a list of mappings (got 5)",),
            id="merge-key-not-a-mapping",
        ),
        pytest.param(
            "defaults:\n  period: yearly\n  gpuHours: lots\n"
            "namespaces:\n  x: {whenExhausted: kill}\n",
            (
                "defaults.period: must be day, week, month or rolling:<N>d (got 'yearly')",
                f"defaults.gpuHours: {GPU_HOURS_RULE} (got 'lots')",
                "namespaces.x.whenExhausted: must be deprioritize, deny or throttle (got 'kill')",
            ),
            id="every-problem-at-once-in-line-order",
        ),
    ],
)
def test_invalid_files(text: str, problems: tuple[str, ...]) -> None:
    with pytest.raises(BudgetsError) as error:
        parse_budgets(text)
    assert error.value.problems == problems


def test_problems_carry_line_numbers() -> None:
    with pytest.raises(BudgetsError) as error:
        parse_budgets("defaults:\n  gpuHours: 1\nnamespaces:\n  team-a:\n    period: often\n")
    assert [(p.path, p.line) for p in error.value.details] == [("namespaces.team-a.period", 5)]


def test_error_is_a_value_error_with_every_problem_in_its_message() -> None:
    with pytest.raises(ValueError, match=r"defaults\.gpuHours: .*; defaults\.period: "):
        parse_budgets("defaults: {gpuHours: x, period: y}\n")


def test_budget_for_falls_back_to_defaults() -> None:
    parsed = parse_budgets(DESIGN_EXAMPLE)
    assert parsed.budget_for("interns").when_exhausted == "deny"
    assert parsed.budget_for("not-listed") == parsed.defaults


def test_namespaces_cannot_be_changed_after_parsing() -> None:
    parsed = parse_budgets(DESIGN_EXAMPLE)
    with pytest.raises(TypeError):
        parsed.namespaces["team-b"] = parsed.defaults  # type: ignore[index]


def test_default_policy_is_monthly_utc_unlimited() -> None:
    assert DEFAULT_POLICY.defaults == Budget(Period("month"), "UTC", None, 80.0, "deprioritize")
    assert dict(DEFAULT_POLICY.namespaces) == {}


def test_load_budgets_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(DESIGN_EXAMPLE, encoding="utf-8")
    assert load_budgets(path).budget_for("team-a").gpu_hours == 500.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param(None, "(file): cannot read {path}: No such file or directory", id="missing"),
        pytest.param(b"\xff\xfe\x00", "(file): cannot read {path}: ", id="not-utf8"),
    ],
)
def test_load_budgets_unreadable(tmp_path: Path, content: bytes | None, problem: str) -> None:
    path = tmp_path / "budgets.yaml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(BudgetsError) as error:
        load_budgets(path)
    assert error.value.problems[0].startswith(problem.format(path=path))


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        pytest.param(
            "defaults: &a {<<: *a}\n",
            ("defaults.<<: a merge key must not refer to the mapping it is in",),
            id="merge-cycle",
        ),
        pytest.param(
            "[" * 5000,
            ("(file): not valid YAML: nested too deeply",),
            id="nested-too-deeply",
        ),
    ],
)
def test_hostile_files_fail_cleanly(text: str, problems: tuple[str, ...]) -> None:
    with pytest.raises(BudgetsError) as error:
        parse_budgets(text)
    assert error.value.problems == problems


def test_nested_merges_take_linear_time() -> None:
    # 3**40 expansions if merges were re-read each time they are named.
    lines = ["  x0: &a0 {gpuHours: 1}"] + [
        f"  x{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}, *a{i - 1}]}}" for i in range(1, 40)
    ]
    parsed = parse_budgets("namespaces:\n" + "\n".join(lines) + "\n")
    assert parsed.budget_for("x39").gpu_hours == 1.0


# Properties -----------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?", fullmatch=True)
periods = st.one_of(
    st.sampled_from([Period("day"), Period("week"), Period("month")]),
    st.builds(lambda days: Period("rolling", days), st.integers(1, 366)),
)
budget_values = st.builds(
    Budget,
    periods,
    st.sampled_from(["UTC", "Europe/Berlin", "Australia/Lord_Howe", "Asia/Kathmandu"]),
    st.one_of(st.none(), st.floats(0, 1e9, allow_nan=False, allow_infinity=False)),
    st.floats(0, 100, exclude_min=True),
    st.sampled_from(["deprioritize", "deny", "throttle"]),
    st.floats(0, 100, exclude_min=True),
    max_vcuda_core=st.one_of(st.none(), st.integers(0, 10_000_000)),
    max_vcuda_memory=st.one_of(st.none(), st.integers(0, 1_000_000_000)),
)


def render(b: Budget, keys: set[str]) -> str:
    values = {
        "period": f"'{b.period}'",
        "timezone": b.timezone,
        "gpuHours": "unlimited" if b.gpu_hours is None else repr(b.gpu_hours),
        "warnAtPercent": repr(b.warn_at_percent),
        "whenExhausted": b.when_exhausted,
        "maxVcudaCore": "unlimited" if b.max_vcuda_core is None else str(b.max_vcuda_core),
        "maxVcudaMemory": "unlimited" if b.max_vcuda_memory is None else str(b.max_vcuda_memory),
        "throttleToPercent": repr(b.throttle_to_percent),
    }
    return "{" + ", ".join(f"{key}: {values[key]}" for key in sorted(keys)) + "}"


@settings(max_examples=200)
@given(
    budget_values,
    st.dictionaries(
        names, st.tuples(budget_values, st.sets(st.sampled_from(BUDGET_KEYS))), max_size=8
    ),
)
def test_rendered_policies_parse_back(
    defaults: Budget, namespaces: dict[str, tuple[Budget, set[str]]]
) -> None:
    text = f"defaults: {render(defaults, set(BUDGET_KEYS))}\nnamespaces:\n" + "".join(
        f"  '{name}': {render(b, keys)}\n" for name, (b, keys) in namespaces.items()
    )
    parsed = parse_budgets(text)
    assert parsed.defaults == defaults
    assert set(parsed.namespaces) == set(namespaces)
    for name, (b, keys) in namespaces.items():
        # Keys an entry leaves out come from the defaults.
        expected = Budget(
            b.period if "period" in keys else defaults.period,
            b.timezone if "timezone" in keys else defaults.timezone,
            b.gpu_hours if "gpuHours" in keys else defaults.gpu_hours,
            b.warn_at_percent if "warnAtPercent" in keys else defaults.warn_at_percent,
            b.when_exhausted if "whenExhausted" in keys else defaults.when_exhausted,
            b.throttle_to_percent if "throttleToPercent" in keys else defaults.throttle_to_percent,
            max_vcuda_core=b.max_vcuda_core if "maxVcudaCore" in keys else defaults.max_vcuda_core,
            max_vcuda_memory=(
                b.max_vcuda_memory if "maxVcudaMemory" in keys else defaults.max_vcuda_memory
            ),
        )
        assert parsed.namespaces[name] == expected


yaml_fragments = st.lists(
    st.sampled_from(
        [
            "defaults:",
            "namespaces:",
            "  ",
            "    ",
            "\n",
            "team-a:",
            "gpuHours:",
            "period:",
            "warnAtPercent:",
            "whenExhausted:",
            "timezone:",
            " 10",
            " -1",
            " .nan",
            " yes",
            " unlimited",
            " month",
            " rolling:7d",
            " deny",
            " UTC",
            "{",
            "}",
            "[",
            "]",
            ",",
            "&a",
            "*a",
            "<<:",
            "'",
            '"',
            "#",
            "---",
            "? ",
            "- ",
            "!!str",
            "!!binary",
            "\t",
            "\u00e9",
            "\x00",
            "%YAML 1.2",
            "1e999",
            "~",
        ]
    ),
    max_size=30,
).map("".join)


@settings(max_examples=500)
@given(st.one_of(yaml_fragments, st.text(max_size=200)))
def test_any_text_parses_or_fails_with_problems(text: str) -> None:
    try:
        parse_budgets(text)
    except BudgetsError as err:
        assert err.problems
        assert all(": " in problem for problem in err.problems)
