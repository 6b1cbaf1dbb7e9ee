"""A real browser for page tests: Debian's headless Chromium.

`chromium()` finds the binary (`GPUSHARE_CHROMIUM`, else `chromium` or `chromium-browser` on
PATH); without it a test is skipped with a message, or fails under CI=true where `.ci/run`
installs it. Each run gets a new empty profile and no network beyond the page asked for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium() -> str:
    found = os.environ.get("GPUSHARE_CHROMIUM") or next(
        (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
    )
    if found is None:
        message = "Chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message}; CI=true needs the browser tests", pytrace=False)
        pytest.skip(message)
    return found


def _run(url: str, *extra: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="gpushare-chromium-") as profile:
        result = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    assert result.returncode == 0, f"chromium exited {result.returncode}: {result.stderr[-2000:]}"
    return result


def dump_dom(url: str) -> str:
    """The page's DOM after Chromium loaded and rendered it."""
    return _run(url, "--dump-dom").stdout


def screenshot(url: str, path: Path, *, width: int = 1000, height: int = 1000) -> bytes:
    """A PNG of the rendered page at `width` x `height`, saved to `path`."""
    _run(url, f"--window-size={width},{height}", f"--screenshot={path}")
    return path.read_bytes()
