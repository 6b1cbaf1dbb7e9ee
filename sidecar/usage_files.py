"""Measured use from usage files: the hook's own accounting, shared through a folder.

The vGPU hook in each GPU container already counts the GPU time its kernels get and the
memory they hold. It publishes them in a small JSON file in a folder the pod shares with
the sidecar (`GPUSHARE_USAGE_DIR`, mounted read-only here); this module reads every file
there. One file per GPU container, any name ending in `.json`, replaced atomically (write a
temporary file in the same folder, then rename it over the old one):

    {
      "format": "gpushare.io/usage/v1",
      "monotonicNanoseconds": 81234567890123,
      "devices": [
        {"index": 0, "busyNanoseconds": 5012345678, "memoryUsedBytes": 1073741824}
      ]
    }

- `monotonicNanoseconds`: CLOCK_MONOTONIC when the file was written (one clock for every
  container of a pod: they share the node's kernel).
- `busyNanoseconds`: GPU time the container's kernels ran on that device, cumulative since
  the container's state began; it never decreases (a decrease means a new state: counted
  from zero again).
- `memoryUsedBytes`: device memory the container's processes hold at that time.

Between two readings, a device's busy time over the file's elapsed time is the share of that
GPU the container used; the pod's `smUtilization` is the busy time of all its devices over
their elapsed time (0..1 per GPU), its memory the sum over the fresh files. A file not
rewritten for `stale_seconds` (its container ended) contributes nothing. Bad files are
skipped and logged once each; sizes are bounded before parsing.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sidecar.usage import UsageSample

log = logging.getLogger(__name__)

FORMAT: Final = "gpushare.io/usage/v1"
MAX_FILE_BYTES: Final = 64 * 1024
MAX_FILES: Final = 64
MAX_DEVICES: Final = 16


class BadUsageFile(ValueError):
    """A usage file that does not follow the format."""


@dataclass(frozen=True)
class DeviceUsage:
    index: int
    busy_nanoseconds: int
    memory_used_bytes: int


@dataclass(frozen=True)
class UsageFile:
    monotonic_nanoseconds: int
    devices: tuple[DeviceUsage, ...]


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value >= 2**63:
        raise BadUsageFile(f"{name}: must be a whole number in 0..2^63-1 (got {value!r:.40})")
    return value


def parse_usage_file(data: bytes) -> UsageFile:
    """The content of one usage file; `BadUsageFile` names the field and the rule."""
    if len(data) > MAX_FILE_BYTES:
        raise BadUsageFile(f"larger than {MAX_FILE_BYTES} bytes ({len(data)} bytes)")
    try:
        content = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise BadUsageFile(f"not JSON ({err})") from err
    if not isinstance(content, dict):
        raise BadUsageFile("must be a JSON object")
    if content.get("format") != FORMAT:
        raise BadUsageFile(f"format: must be {FORMAT!r} (got {content.get('format')!r:.40})")
    stamp = _whole(content.get("monotonicNanoseconds"), "monotonicNanoseconds")
    devices = content.get("devices")
    if not isinstance(devices, list) or len(devices) > MAX_DEVICES:
        raise BadUsageFile(f"devices: must be a list of at most {MAX_DEVICES} objects")
    parsed: list[DeviceUsage] = []
    for position, device in enumerate(devices):
        where = f"devices[{position}]"
        if not isinstance(device, dict):
            raise BadUsageFile(f"{where}: must be an object")
        parsed.append(
            DeviceUsage(
                index=_whole(device.get("index"), f"{where}.index"),
                busy_nanoseconds=_whole(device.get("busyNanoseconds"), f"{where}.busyNanoseconds"),
                memory_used_bytes=_whole(device.get("memoryUsedBytes"), f"{where}.memoryUsedBytes"),
            )
        )
    if len({device.index for device in parsed}) != len(parsed):
        raise BadUsageFile("devices: an index appears twice")
    return UsageFile(stamp, tuple(parsed))


class UsageFileReader:
    """`UsageReader` over the usage files of one folder."""

    def __init__(
        self,
        folder: str,
        *,
        stale_seconds: float = 30.0,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.folder = folder
        self.stale_ns = int(stale_seconds * 1e9)
        self._now = monotonic_ns
        self._previous: dict[str, UsageFile] = {}
        self._complaints: dict[str, str] = {}
        log.info("measured use comes from the usage files in %s", folder)

    def _files(self) -> dict[str, UsageFile]:
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self.folder)
                if entry.name.endswith(".json") and not entry.name.startswith(".")
            )
        except OSError as err:
            self._complain("(folder)", f"cannot list {self.folder}: {err.strerror or err}")
            return {}
        if len(names) > MAX_FILES:
            self._complain("(folder)", f"{len(names)} files; only the first {MAX_FILES} are read")
            names = names[:MAX_FILES]
        found: dict[str, UsageFile] = {}
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                with open(path, "rb") as handle:
                    found[name] = parse_usage_file(handle.read(MAX_FILE_BYTES + 1))
            except FileNotFoundError:
                continue  # replaced or removed between the listing and the read
            except (OSError, BadUsageFile) as err:
                self._complain(name, str(err))
                continue
            self._complaints.pop(name, None)
        return found

    def _complain(self, name: str, reason: str) -> None:
        if self._complaints.get(name) != reason:
            self._complaints[name] = reason
            log.warning("usage file %s in %s skipped: %s", name, self.folder, reason)

    def sample(self) -> UsageSample | None:
        now = self._now()
        files = {
            name: usage
            for name, usage in self._files().items()
            if now - usage.monotonic_nanoseconds <= self.stale_ns
        }
        busy_ns = 0
        elapsed_ns = 0
        for name, usage in files.items():
            before = self._previous.get(name)
            if before is None or usage.monotonic_nanoseconds <= before.monotonic_nanoseconds:
                continue
            span = usage.monotonic_nanoseconds - before.monotonic_nanoseconds
            earlier = {device.index: device.busy_nanoseconds for device in before.devices}
            for device in usage.devices:
                start = earlier.get(device.index, 0)
                # A counter that went back started again (a new state): count from zero.
                gained = device.busy_nanoseconds - (
                    start if device.busy_nanoseconds >= start else 0
                )
                busy_ns += min(gained, span)
                elapsed_ns += span
        self._previous = files
        if not files:
            return None
        memory = sum(
            device.memory_used_bytes for usage in files.values() for device in usage.devices
        )
        sm = busy_ns / elapsed_ns if elapsed_ns > 0 else None
        return UsageSample(sm_utilization=sm, memory_used_bytes=memory)

    def close(self) -> None:
        return None
