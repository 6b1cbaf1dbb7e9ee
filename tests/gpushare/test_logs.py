import json
import logging
import sys

import pytest

from gpushare import logs


def record(**fields: object) -> logging.LogRecord:
    base: dict[str, object] = {"name": "part.module", "levelname": "WARNING", "created": 0.5}
    return logging.makeLogRecord(base | fields)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"msg": "GPU %d is %s", "args": (1, "UNHEALTHY")},
            {
                "time": "1970-01-01T00:00:00.500Z",
                "level": "warning",
                "logger": "part.module",
                "message": "GPU 1 is UNHEALTHY",
            },
            id="message-with-arguments",
        ),
        pytest.param(
            {"msg": "refused", "namespace": "team-a", "pod": "train"},
            {
                "time": "1970-01-01T00:00:00.500Z",
                "level": "warning",
                "logger": "part.module",
                "message": "refused",
                "namespace": "team-a",
                "pod": "train",
            },
            id="extra-fields-kept",
        ),
    ],
)
def test_json_lines(fields: dict[str, object], expected: dict[str, object]) -> None:
    assert json.loads(logs.JsonFormatter().format(record(**fields))) == expected


def test_exception_text_is_logged() -> None:
    try:
        raise ValueError("bad value")
    except ValueError:
        entry = json.loads(
            logs.JsonFormatter().format(record(msg="failed", exc_info=sys.exc_info()))
        )
    assert entry["message"] == "failed"
    assert entry["exception"].endswith("ValueError: bad value")


def test_configure_replaces_root_handlers_and_sets_level() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        logs.configure(log_format="json", level="error")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        assert root.level == logging.ERROR
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
