"""The reloading TLS context: new files are picked up, a mismatched pair never is."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.webhook.serving import generate_certs
from webhook.tls import ReloadingContext


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reload_follows_files_and_skips_mismatched_pair(tmp_path: Path) -> None:
    live, fresh = tmp_path / "live", tmp_path / "fresh"
    generate_certs(live)
    generate_certs(fresh, "--ca-cert", str(live / "ca.crt"), "--ca-key", str(live / "ca.key"))
    clock = Clock()
    contexts = ReloadingContext(
        str(live / "tls.crt"), str(live / "tls.key"), check_seconds=1.0, clock=clock
    )
    first = contexts.context()
    assert contexts.context() is first

    shutil.copy(fresh / "tls.crt", live / "tls.crt")  # certificate first, key not yet
    clock.now += 2
    assert contexts.context() is first, "a certificate without its key must not be loaded"

    shutil.copy(fresh / "tls.key", live / "tls.key")
    clock.now += 0.5
    assert contexts.context() is first, "files are checked at most every check_seconds"
    clock.now += 1
    second = contexts.context()
    assert second is not first
    clock.now += 2
    assert contexts.context() is second, "unchanged files are not reloaded"
