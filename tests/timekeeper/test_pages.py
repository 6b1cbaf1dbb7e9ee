"""The usage pages in a real browser: what a person sees once Chromium rendered them."""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.timekeeper import browser
from tests.timekeeper.conftest import MakeApp
from timekeeper.auth import Authenticator, parse_tokens

BUDGETS = """\
defaults: {gpuHours: 100}
namespaces:
  team-a: {gpuHours: 60, warnAtPercent: 70}
  ci: {period: "rolling:7d", gpuHours: 20}
  research: {gpuHours: unlimited}
"""


class Visible(HTMLParser):
    """The text a reader sees, by element id, plus every SVG's accessible label."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.labels: list[str] = []
        self.rows: list[list[str]] = []
        self._skip = 0
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "title"):
            self._skip += 1
        if tag == "svg":
            self.labels.append(dict(attrs).get("aria-label") or "")
        if tag == "tr":
            self._row = []
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title"):
            self._skip -= 1
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)

    @property
    def words(self) -> str:
        return " ".join(" ".join(self.text).split())


def seen(url: str) -> Visible:
    parser = Visible()
    parser.feed(browser.dump_dom(url))
    return parser


def report(
    uid: str,
    pod: str,
    ns: str,
    seq: int,
    start: datetime,
    hours: float,
    core: int,
    sm: float | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "podUid": uid,
        "pod": pod,
        "namespace": ns,
        "sequence": seq,
        "start": start.isoformat().replace("+00:00", "Z"),
        "end": (start + timedelta(hours=hours)).isoformat().replace("+00:00", "Z"),
        "vcudaCore": core,
        "vcudaMemory": 8,
    }
    if sm is not None:
        body["smUtilization"] = sm
    return body


def fill(client: Any) -> None:
    for day in range(1, 21):
        start = datetime(2026, 11, day, 8, tzinfo=UTC)
        bodies = [
            report("uid-train", "train-resnet", "team-a", day, start, 2, 100, 0.9),
            report("uid-nb", "notebook-alice", "team-a", day, start, 1, 50, 0.02),
        ]
        for body in bodies:
            assert client.post("/api/v1/reports", json=body).status_code == 200


def serve(app: Any) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture
def database_kind() -> str:
    """SQLite only: the pages read through the ledger queries the API tests run on both."""
    return "sqlite"


@pytest.fixture
def url(make_app: MakeApp) -> Iterator[str]:
    browser.chromium()
    app = make_app(budgets=BUDGETS)
    fill(app.test_client())
    yield from serve(app)


def test_the_list_shows_every_namespace_with_its_budget(url: str) -> None:
    page = seen(f"{url}/ui/")
    assert "GPU budgets" in page.words
    rows = {row[0]: row for row in page.rows[1:]}
    assert set(rows) == {"ci", "research", "team-a"}
    # team-a: 20 days x (2 h x 1 GPU + 1 h x 0.5 GPU) = 50 GPU-hours of 60, warning from 70 %.
    assert rows["team-a"][1] == "warning"
    assert rows["team-a"][3:5] == ["50.00", "60.00"]
    assert rows["team-a"][7:9] == ["month", "2026-12-01T00:00:00Z"]
    assert rows["ci"][7:9] == ["rolling:7d", "never: a sliding window"]
    # The bar of an unlimited budget says so in words.
    assert rows["research"][1:5] == ["unlimited", "unlimited", "0.00", "unlimited"]
    assert "50.00 of 60.00 GPU-hours used (83%), projected 74.07" in page.labels


def test_a_namespace_page_shows_daily_use_top_pods_and_idle_share(url: str) -> None:
    page = seen(f"{url}/ui/namespaces/team-a")
    assert "team-a warning" in page.words
    assert "Used 50.00 of 60.00 GPU-hours" in page.words
    # Idle: train used 90 % of its 40 GPU-hours, the notebook 2 % of one GPU for 20 hours
    # against 10 allocated: 36.4 used of 50, 27 % idle.
    assert "Idle share 27%" in page.words
    assert "daily GPU-hours over 21 days, 50.00 in all against a budget of 60.00" in page.labels
    assert page.rows[1:] == [
        ["train-resnet", "40.000", "36.000", "10%", "20", "2026-11-20T10:00:00Z"],
        ["notebook-alice", "10.000", "0.400", "96%", "20", "2026-11-20T09:00:00Z"],
    ]


def test_a_screenshot_of_a_namespace_page(url: str, tmp_path: Path) -> None:
    png = browser.screenshot(f"{url}/ui/namespaces/team-a", tmp_path / "team-a.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1000, 1000)


def test_pages_follow_the_read_token_setting(make_app: MakeApp) -> None:
    app = make_app(
        budgets=BUDGETS,
        read_requires_token=True,
        authenticator=Authenticator(
            static_tokens=parse_tokens(
                {"tokens": [{"token": "a-reader-token-of-some-length", "namespace": "team-a"}]}
            )
        ),
    )
    client = app.test_client()
    for path in ("/ui/", "/ui/namespaces/team-a"):
        assert client.get(path).status_code == 401
        answer = client.get(path, headers={"Authorization": "Bearer a-reader-token-of-some-length"})
        assert answer.status_code == 200
        assert answer.mimetype == "text/html"
