"""Allocations held on this node and their checkpoint file (pure data + atomic file write).

One allocation is what one Allocate call gave one container for one resource: its device IDs,
the units per GPU, the state directory (core allocations) and, once known, the owning pod.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nodemanager.devices import Kind

CHECKPOINT_VERSION = 1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Owner:
    """The container an allocation belongs to.

    `confirmed` is True once kubelet's PodResources API has reported these device IDs for this
    container; before that the owner is the node manager's best match among pending pods.
    """

    namespace: str
    pod: str
    container: str
    uid: str = ""
    confirmed: bool = False

    def describe(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@dataclass(frozen=True)
class Allocation:
    id: str
    kind: Kind
    device_ids: tuple[str, ...]
    units_by_gpu: dict[str, int]
    created_at: float
    owner: Owner | None = None
    state_dir: str = ""
    core_limit: int = 0
    core_soft_limit: int = 0
    sm_partition: int = 0
    """Percent of SMs handed out as CUDA_MPS_ACTIVE_THREAD_PERCENTAGE; 0 = none (all SMs)."""

    def to_json(self) -> dict[str, Any]:
        owner = self.owner
        return {
            "id": self.id,
            "kind": self.kind.value,
            "device_ids": list(self.device_ids),
            "units_by_gpu": self.units_by_gpu,
            "created_at": self.created_at,
            "owner": None
            if owner is None
            else {
                "namespace": owner.namespace,
                "pod": owner.pod,
                "container": owner.container,
                "uid": owner.uid,
                "confirmed": owner.confirmed,
            },
            "state_dir": self.state_dir,
            "core_limit": self.core_limit,
            "core_soft_limit": self.core_soft_limit,
            "sm_partition": self.sm_partition,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Allocation:
        owner = data.get("owner")
        return cls(
            id=str(data["id"]),
            kind=Kind(data["kind"]),
            device_ids=tuple(str(item) for item in data["device_ids"]),
            units_by_gpu={str(k): int(v) for k, v in data["units_by_gpu"].items()},
            created_at=float(data["created_at"]),
            owner=Owner(**owner) if owner else None,
            state_dir=str(data.get("state_dir", "")),
            core_limit=int(data.get("core_limit", 0)),
            core_soft_limit=int(data.get("core_soft_limit", 0)),
            sm_partition=int(data.get("sm_partition", 0)),
        )


class CheckpointError(Exception):
    """The checkpoint file exists but cannot be read."""


@dataclass
class Ledger:
    """Allocations by ID, with an index from device ID to the allocation that holds it."""

    allocations: dict[str, Allocation] = field(default_factory=dict)
    _by_device: dict[tuple[Kind, str], str] = field(default_factory=dict)
    _encoded: dict[str, str] = field(default_factory=dict)
    """JSON of each allocation, kept so that a save encodes only what changed."""

    def add(self, allocation: Allocation) -> list[Allocation]:
        """Record `allocation`; returns older allocations it displaced (kubelet reused their
        devices, so their containers are gone)."""
        displaced_ids = {
            self._by_device[(allocation.kind, device)]
            for device in allocation.device_ids
            if (allocation.kind, device) in self._by_device
        }
        displaced = [self.release(old) for old in sorted(displaced_ids)]
        self.allocations[allocation.id] = allocation
        self._encoded[allocation.id] = json.dumps(allocation.to_json(), separators=(",", ":"))
        for device in allocation.device_ids:
            self._by_device[(allocation.kind, device)] = allocation.id
        return [item for item in displaced if item is not None]

    def release(self, allocation_id: str) -> Allocation | None:
        allocation = self.allocations.pop(allocation_id, None)
        self._encoded.pop(allocation_id, None)
        if allocation is not None:
            for device in allocation.device_ids:
                self._by_device.pop((allocation.kind, device), None)
        return allocation

    def holder(self, kind: Kind, device_id: str) -> Allocation | None:
        allocation_id = self._by_device.get((kind, device_id))
        return None if allocation_id is None else self.allocations[allocation_id]

    def set_owner(self, allocation_id: str, owner: Owner) -> None:
        allocation = replace(self.allocations[allocation_id], owner=owner)
        self.allocations[allocation_id] = allocation
        self._encoded[allocation_id] = json.dumps(allocation.to_json(), separators=(",", ":"))

    def used_units(self, kind: Kind) -> dict[str, int]:
        """Units of `kind` held per GPU UUID."""
        used: dict[str, int] = {}
        for allocation in self.allocations.values():
            if allocation.kind is kind:
                for uuid, units in allocation.units_by_gpu.items():
                    used[uuid] = used.get(uuid, 0) + units
        return used

    def of_kind(self, kind: Kind) -> Iterable[Allocation]:
        return (item for item in self.allocations.values() if item.kind is kind)

    def text(self) -> str:
        """The checkpoint document."""
        return (
            f'{{"version":{CHECKPOINT_VERSION},"allocations":['
            + ",".join(self._encoded.values())
            + "]}"
        )

    def save(self, path: Path) -> None:
        write_checkpoint(path, self.text())

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """Read a checkpoint; a missing file is an empty ledger."""
        ledger = cls()
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return ledger
        try:
            payload = json.loads(data)
            if not isinstance(payload, dict):
                raise CheckpointError(
                    f"checkpoint {path} is unreadable: it must be a JSON object "
                    f"(got {type(payload).__name__})"
                )
            if payload.get("version") != CHECKPOINT_VERSION:
                raise CheckpointError(
                    f"checkpoint {path}: version must be {CHECKPOINT_VERSION} "
                    f"(got {payload.get('version')!r})"
                )
            for item in payload["allocations"]:
                ledger.add(Allocation.from_json(item))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"checkpoint {path} is unreadable: {err}") from err
        return ledger


def write_checkpoint(path: Path, text: str) -> None:
    """Write the checkpoint atomically: a crash leaves the old file or the new, never half.

    The new file is synced before it replaces the old one. The directory is not synced:
    should a power loss undo the rename, the older checkpoint is read and the missing
    allocations are adopted from kubelet's PodResources on the first reconcile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class CheckpointWriter:
    """Writes the checkpoint on a background thread so that Allocate never waits on the disk.

    Requests coalesce: however many arrive while a write is under way, one more write of the
    latest state follows. `flush()` waits until every request so far is on disk.
    """

    def __init__(self, path: Path, snapshot: Callable[[], str]) -> None:
        self._path = path
        self._snapshot = snapshot
        self._condition = threading.Condition()
        self._wanted = 0
        self._written = 0
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        with self._condition:
            self._wanted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="checkpoint", daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def flush(self, timeout_seconds: float = 30.0) -> None:
        """Block until every request made so far is written."""
        with self._condition:
            target = self._wanted
            self._condition.wait_for(lambda: self._written >= target, timeout=timeout_seconds)

    def _run(self) -> None:
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._wanted > self._written)
                target = self._wanted
            try:
                write_checkpoint(self._path, self._snapshot())
            except OSError as err:
                log.error("cannot write the checkpoint %s: %s", self._path, err)
            with self._condition:
                self._written = target
                self._condition.notify_all()
