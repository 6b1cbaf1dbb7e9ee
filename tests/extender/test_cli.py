"""`gpushare extender`: flags checked together; the documents it shares with the node manager."""

from __future__ import annotations

import pytest

from extender.cli import Settings, SettingsError, parse_settings
from gpushare import cli
from gpushare.assignment import (
    Assignment,
    AssignmentError,
    Share,
    format_assignment,
    parse_assignment,
    parse_inventory,
)


def parse(argv: list[str]) -> Settings:
    return parse_settings(cli.build_parser().parse_args(["extender", *argv]))


def test_defaults_and_flags() -> None:
    assert parse([]) == Settings()
    assert parse(["--host", "127.0.0.1", "--port", "0", "--assume-seconds", "5"]) == Settings(
        host="127.0.0.1", port=0, assume_seconds=5.0
    )


def test_every_bad_flag_is_reported_together() -> None:
    with pytest.raises(SettingsError) as caught:
        parse(["--port", "70000", "--threads", "0", "--assume-seconds", "nan", "--log-level", "x"])
    message = str(caught.value)
    for expected in (
        "--port: must be an integer 0..65535 (got '70000')",
        "--threads: must be an integer 1..256 (got '0')",
        "--assume-seconds: must be a number 1..3600 (got 'nan')",
        "--log-level: must be debug, info, warning or error (got 'x')",
    ):
        assert expected in message


def test_bad_flags_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["extender", "--port", "x"]) == 2
    assert "--port: must be an integer" in capsys.readouterr().err


def test_an_assignment_reads_back_as_written() -> None:
    written = Assignment(
        node="n1",
        containers={"a": (Share("GPU-1", 40, 24),), "b": (Share("GPU-2", 100, 8),)},
    )
    assert parse_assignment(format_assignment(written)) == written


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[]", "must be a JSON object", id="not-an-object"),
        pytest.param('{"version": 2}', "version must be 1", id="other-version"),
        pytest.param(
            '{"version": 1, "node": "n", "containers": {"c": [{"uuid": "g", "core": 101, '
            '"memory": 1}]}}',
            "core must be an integer 0..100",
            id="core-over-100",
        ),
        pytest.param("[" * 5000 + "]" * 5000, "not JSON", id="deeply-nested"),
        pytest.param("x" * 70_000, "the limit is 65536", id="too-long"),
    ],
)
def test_malformed_assignments_name_the_field(text: str, message: str) -> None:
    with pytest.raises(AssignmentError, match=message):
        parse_assignment(text)


def test_an_inventory_lists_each_uuid_once() -> None:
    text = (
        '{"version": 1, "gpus": [{"index": 0, "uuid": "g", "memory": 64},'
        ' {"index": 1, "uuid": "g", "memory": 64}]}'
    )
    with pytest.raises(AssignmentError, match="lists a UUID twice"):
        parse_inventory(text)
