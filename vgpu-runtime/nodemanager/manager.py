"""The node manager's state and decisions: devices offered, GPUs chosen, limits handed out.

Everything here is independent of gRPC: the device plugin servicers (`plugin.py`) translate
requests into calls of `NodeManager` and its errors into gRPC status codes.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpushare.assignment import (
    NODE_GPU_INVENTORY,
    POD_GPU_ALLOCATED,
    POD_GPU_ASSIGNMENT,
    InventoryGpu,
    format_inventory,
)
from gpushare.assignment import Inventory as InventoryDocument
from gpushare.resources import CORE_UNITS_PER_GPU, MEMORY_UNIT_BYTES, USAGE_DIR
from nodemanager import pods
from nodemanager.devices import (
    DeviceId,
    Kind,
    UnknownDeviceError,
    device_ids,
    parse_device_id,
    shown_id,
)
from nodemanager.gputime.mps import MpsDaemons, MpsDirs, MpsError
from nodemanager.inventory import Gpu, Inventory
from nodemanager.kube import (
    KubernetesError,
    NodePublisher,
    PodAnnotator,
    PodResourcesSource,
    PodSource,
)
from nodemanager.ledger import Allocation, CheckpointWriter, Ledger, Owner
from nodemanager.placement import GpuCapacity, Policy

log = logging.getLogger(__name__)

HOOK_LIBRARY_NAME = "libgpushare-vgpu.so"
POD_CACHE_SECONDS = 2.0
"""How long a list of pending pods is reused while it still matches."""


@dataclass(frozen=True)
class Paths:
    """Where things live on the host and inside containers."""

    hook_library_dir: Path
    """Host directory holding libgpushare-vgpu.so (installed there by the DaemonSet)."""
    state_root: Path
    """Host directory under which each container gets its state directory."""
    checkpoint: Path
    """Host file holding the allocations (JSON, written atomically)."""
    container_hook_dir: str = "/usr/local/gpushare/lib"
    """Where the hook library directory appears inside containers (read-only)."""
    container_state_dir: str = "/var/run/gpushare"
    """Where the container's state directory appears inside it."""
    container_usage_dir: str = USAGE_DIR
    """Where the pod's usage folder appears in its GPU containers (an emptyDir the webhook
    adds); the hook writes `<allocation id>.json` there for the accounting sidecar."""
    container_mps_dir: str = "/var/run/gpushare-mps"
    """Where a container with an SM partition finds its GPU's MPS pipe (`pipe`) and log
    (`log`) directories."""


@dataclass(frozen=True)
class MountSpec:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class Grant:
    """What one container gets from one Allocate: environment and mounts."""

    allocation_id: str
    envs: dict[str, str]
    mounts: tuple[MountSpec, ...]


class PendingPods(Protocol):
    """An in-memory view of this node's pending pods (`podwatch.PodWatch`)."""

    def pending_containers(self) -> list[pods.ContainerRequest] | None:
        """The pending containers in admission order; None while the view is not in sync."""
        ...


class RequestError(Exception):
    """A request kubelet should never send: unknown devices, devices split across GPUs."""


class DoesNotFitError(Exception):
    """The request is well formed but this node has no room for it."""


class NodeError(Exception):
    """The node itself is not fit to serve the request (e.g. a host directory is unusable)."""


class NodeManager:
    """Devices, allocations and placement of one node. Thread-safe."""

    def __init__(
        self,
        *,
        node_name: str,
        inventory: Inventory,
        paths: Paths,
        policy: Policy = Policy.BINPACK,
        pod_source: PodSource | None = None,
        pod_cache: PendingPods | None = None,
        pod_resources: PodResourcesSource | None = None,
        publisher: NodePublisher | None = None,
        annotator: PodAnnotator | None = None,
        release_grace_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        scheduler_socket: str | None = None,
        on_allocations_changed: Callable[[], None] = lambda: None,
        mps: MpsDaemons | None = None,
    ) -> None:
        self.node_name = node_name
        self.inventory = inventory
        self.paths = paths
        self.policy = policy
        self._pod_source = pod_source
        self._pod_cache_view = pod_cache
        self.pod_lists = 0
        """How many times Allocate listed pending pods from the API server (not the cache)."""
        self._pod_resources = pod_resources
        self._publisher = publisher
        self._annotator = annotator
        self._marks: list[tuple[str, str, str]] = []
        self._marks_ready = threading.Condition()
        self._marker: threading.Thread | None = None
        self._grace = release_grace_seconds
        self._clock = clock
        self._reconcile_error: str | None = None
        """The last reconcile's failure, so that a kubelet that stays away is reported once."""
        self._scheduler_socket = scheduler_socket
        """Name of the GPU time scheduler's socket in a state directory; None: no scheduler."""
        self._on_allocations_changed = on_allocations_changed
        self._mps = mps
        """The MPS control daemons of containers with an SM partition; None: not run."""
        self.gpus: tuple[Gpu, ...] = tuple(inventory.gpus())
        self._gpu_by_uuid = {gpu.uuid: gpu for gpu in self.gpus}
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        """Notified whenever device health changes; `device_version` counts the changes."""
        self.device_version = 0
        self.capacity_changed = threading.Event()
        """Set whenever free capacity changes, so that it is published without delay."""
        self._healthy = {gpu.uuid: True for gpu in self.gpus}
        self._device_index = {
            text: parse_device_id(text, kind, self.gpus)
            for kind in Kind
            for gpu in self.gpus
            for text in device_ids(gpu, kind)
        }
        self._pod_cache: tuple[float, list[pods.ContainerRequest]] | None = None
        self._ledger = Ledger.load(paths.checkpoint)
        self._checkpoint = CheckpointWriter(paths.checkpoint, self._checkpoint_text)
        self._published = ""

    def _allocations_changed(self) -> None:
        self._checkpoint.request()
        self.capacity_changed.set()
        self._on_allocations_changed()

    def _checkpoint_text(self) -> str:
        with self._lock:
            return self._ledger.text()

    def flush_checkpoint(self) -> None:
        """Wait until the checkpoint file holds every allocation change made so far."""
        self._checkpoint.flush()

    # --- devices -----------------------------------------------------------------------
    def devices(self, kind: Kind) -> list[tuple[str, bool]]:
        """(device ID, healthy) of every device of `kind`."""
        with self._lock:
            return [
                (device, self._healthy[gpu.uuid])
                for gpu in self.gpus
                for device in device_ids(gpu, kind)
            ]

    def check_health(self) -> bool:
        """Run every GPU's health check; True (and watchers notified) when something changed."""
        results = {gpu.uuid: self.inventory.is_healthy(gpu) for gpu in self.gpus}
        with self._lock:
            if results == self._healthy:
                return False
            for gpu in self.gpus:
                if results[gpu.uuid] != self._healthy[gpu.uuid]:
                    state = "healthy" if results[gpu.uuid] else "UNHEALTHY"
                    log.warning("GPU %d (%s) is now %s", gpu.index, gpu.uuid, state)
            self._healthy = results
            self.device_version += 1
            self.changed.notify_all()
        self.capacity_changed.set()
        return True

    def capacities(self) -> list[GpuCapacity]:
        with self._lock:
            return self._capacities()

    def _capacities(self) -> list[GpuCapacity]:
        used_core = self._ledger.used_units(Kind.CORE)
        used_memory = self._ledger.used_units(Kind.MEMORY)
        return [
            GpuCapacity(
                index=gpu.index,
                uuid=gpu.uuid,
                core_total=CORE_UNITS_PER_GPU,
                core_free=max(0, CORE_UNITS_PER_GPU - used_core.get(gpu.uuid, 0)),
                memory_total=gpu.memory_units,
                memory_free=max(0, gpu.memory_units - used_memory.get(gpu.uuid, 0)),
                healthy=self._healthy[gpu.uuid],
            )
            for gpu in self.gpus
        ]

    def allocations(self) -> list[Allocation]:
        with self._lock:
            return list(self._ledger.allocations.values())

    # --- pods ----------------------------------------------------------------------------
    def _find(self, kind: Kind, size: int) -> pods.Match:
        """Match an allocation to a pending container. The watched pods of this node
        (`pod_cache`) answer when in sync and holding a match. Otherwise a pod list younger
        than POD_CACHE_SECONDS is reused when it has a match (kubelet calls
        GetPreferredAllocation and Allocate back to back); otherwise the API server is asked."""
        core_limit = _core_limit(kind, size)
        if self._pod_cache_view is not None:
            watched = self._pod_cache_view.pending_containers()
            if watched is not None:
                with self._lock:
                    found = pods.match(watched, kind, size, self._served(), core_limit)
                if found.candidate is not None:
                    return found
        cached = self._pod_cache
        if cached is not None and self._clock() - cached[0] < POD_CACHE_SECONDS:
            with self._lock:
                found = pods.match(cached[1], kind, size, self._served(), core_limit)
            if found.candidate is not None:
                return found
        candidates: list[pods.ContainerRequest] = []
        if self._pod_source is not None:
            try:
                self.pod_lists += 1
                listed = self._pod_source.pending_pods(self.node_name)
                candidates = pods.pending_containers(listed, self.node_name)
                self._pod_cache = (self._clock(), candidates)
            except KubernetesError as err:
                log.warning("pod identity unknown for this allocation: %s", err)
        with self._lock:
            return pods.match(candidates, kind, size, self._served(), core_limit)

    def _served(self) -> set[tuple[str, str, Kind]]:
        """(pod UID, container, kind) of every owned allocation; owners known only by name
        (corrected or adopted from PodResources) count as `namespace/pod` instead of UID."""
        served = set()
        for item in self._ledger.allocations.values():
            owner = item.owner
            if owner is not None:
                pod = owner.uid or f"{owner.namespace}/{owner.pod}"
                served.add((pod, owner.container, item.kind))
        return served

    # --- GetPreferredAllocation ------------------------------------------------------------
    def preferred(
        self, kind: Kind, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """Device IDs kubelet should allocate: those of the GPU(s) assigned to the container."""
        found = self._find(kind, size)
        with self._lock:
            parsed = self._parse(kind, available)
            required = self._parse(kind, must_include)
            if size <= 0 or size > len(parsed):
                raise DoesNotFitError(
                    f"{kind.resource_name}: {size} devices asked, {len(parsed)} available"
                )
            wanted = self._assigned(kind, size, found)
            return _pick(parsed, required, wanted, size, kind)

    def _assigned(self, kind: Kind, size: int, found: pods.Match) -> dict[str, int]:
        """Units of `kind` per GPU assigned to the matched container; refused without one."""
        request = found.candidate
        if request is None:
            raise DoesNotFitError(
                f"{kind.resource_name}: no pod bound to node {self.node_name} and waiting for "
                f"allocation has a container asking {size} that the gpushare scheduler "
                f"assigned GPUs to ({POD_GPU_ASSIGNMENT}); GPU pods must be scheduled by the "
                "gpushare scheduler (schedulerName gpushare-scheduler)"
            )
        wanted = dict(request.gpus(kind) or {})
        unknown = [uuid for uuid in wanted if uuid not in self._gpu_by_uuid]
        if unknown or sum(wanted.values()) != size:
            raise RequestError(
                f"{kind.resource_name}: pod {request.namespace}/{request.pod} container "
                f"{request.container!r} is assigned {sum(wanted.values())} units on "
                f"{', '.join(wanted) or 'no GPU'}, which does not match {size} devices of "
                "this node"
            )
        if found.ambiguous:
            log.warning(
                "%s=%d: several waiting pods could be the one kubelet admits and their GPUs "
                "differ; taking %s/%s",
                kind.resource_name,
                size,
                request.namespace,
                request.pod,
            )
        return wanted

    def _parse(self, kind: Kind, ids: Sequence[str]) -> list[DeviceId]:
        parsed = []
        seen: set[str] = set()
        for text in ids:
            device = self._device_index.get(text)
            if device is None or device.kind is not kind:
                try:
                    device = parse_device_id(text, kind, self.gpus)
                except UnknownDeviceError as err:
                    raise RequestError(str(err)) from err
            parsed.append(device)
            if text in seen:
                raise RequestError(
                    f"{kind.resource_name}: device ID {shown_id(text)} is listed twice"
                )
            seen.add(text)
        return parsed

    # --- Allocate --------------------------------------------------------------------------
    def allocate(self, kind: Kind, ids: Sequence[str]) -> Grant:
        """Record the allocation of `ids` to one container and build what it gets."""
        found = self._find(kind, len(ids))
        with self._lock:
            parsed = self._parse(kind, ids)
            if not parsed:
                raise RequestError(f"{kind.resource_name}: Allocate without device IDs")
            by_gpu: dict[str, int] = {}
            for device in parsed:
                by_gpu[device.gpu_uuid] = by_gpu.get(device.gpu_uuid, 0) + 1
            size = len(parsed)
            self._check_shape(kind, size, by_gpu)
            unhealthy = [uuid for uuid in by_gpu if not self._healthy[uuid]]
            if unhealthy:
                raise DoesNotFitError(
                    f"{kind.resource_name}: GPU {self._describe_gpus(unhealthy)} is unhealthy"
                )
            core_limit = _core_limit(kind, size)
            wanted = self._assigned(kind, size, found)
            request = found.candidate
            assert request is not None
            if by_gpu != wanted:
                raise RequestError(
                    f"{kind.resource_name}: devices on {self._describe_split(by_gpu)}, but "
                    f"pod {request.namespace}/{request.pod} container {request.container!r} is "
                    f"assigned {self._describe_split(wanted)}"
                )
            owner = Owner(request.namespace, request.pod, request.container, request.uid)
            sm_partition = (found.sm_partition or 0) if kind is Kind.CORE else 0
            mps = self._start_mps(sm_partition, by_gpu, owner)
            allocation_id = uuid.uuid4().hex[:16]
            state_dir = ""
            if kind is Kind.CORE:
                state = self.paths.state_root / allocation_id
                try:
                    state.mkdir(parents=True, exist_ok=True)
                    state.chmod(0o1777)  # the container's processes may run as any user
                except OSError as err:
                    raise NodeError(f"cannot create the state directory {state}: {err}") from err
                state_dir = str(state)
            allocation = Allocation(
                id=allocation_id,
                kind=kind,
                device_ids=tuple(ids),
                units_by_gpu=by_gpu,
                created_at=self._clock(),
                owner=owner,
                state_dir=state_dir,
                core_limit=core_limit if kind is Kind.CORE else 0,
                core_soft_limit=found.soft_limit if kind is Kind.CORE else 0,
                sm_partition=sm_partition,
            )
            for old in self._ledger.add(allocation):
                log.info("allocation %s released: kubelet reused its devices", old.id)
                _remove_state_dir(old, self.paths.state_root)
            self._allocations_changed()
            log.info(
                "allocated %d %s on GPU %s to %s%s",
                size,
                kind.resource_name,
                self._describe_gpus(list(by_gpu)),
                owner.describe(),
                " (one of several waiting pods with different GPUs)" if found.ambiguous else "",
            )
            if found.last:
                self._mark_allocated(request.namespace, request.pod)
            return self._grant(allocation, mps)

    def _start_mps(self, sm_partition: int, by_gpu: dict[str, int], owner: Owner) -> MpsDirs | None:
        """The MPS directories of the container's GPU, its daemon started; None when the
        container has no SM partition (or spans GPUs, or MPS is not run)."""
        if self._mps is None or not sm_partition or len(by_gpu) != 1:
            return None
        gpu = next(iter(by_gpu))
        try:
            return self._mps.ensure(gpu)
        except MpsError as err:
            raise NodeError(
                f"{owner.describe()} asks gpushare.io/sm-partition={sm_partition}, which needs an"
                f" MPS control daemon on GPU {self._describe_gpus([gpu])}: {err}"
            ) from err

    def _check_shape(self, kind: Kind, size: int, by_gpu: dict[str, int]) -> None:
        if kind is not Kind.CORE:
            return
        if size < CORE_UNITS_PER_GPU and len(by_gpu) > 1:
            raise RequestError(
                f"{kind.resource_name}={size} is a share of one GPU, but the device IDs span "
                f"GPUs {self._describe_split(by_gpu)}"
            )
        if size >= CORE_UNITS_PER_GPU and (
            size % CORE_UNITS_PER_GPU or any(n != CORE_UNITS_PER_GPU for n in by_gpu.values())
        ):
            raise RequestError(
                f"{kind.resource_name}={size} asks for whole GPUs, which needs all 100 devices "
                f"of each GPU, but the device IDs are spread as {self._describe_split(by_gpu)}"
            )

    def _describe_gpus(self, uuids: Sequence[str]) -> str:
        return ", ".join(str(self._gpu_by_uuid[uuid].index) for uuid in uuids)

    def _describe_split(self, by_gpu: dict[str, int]) -> str:
        return ", ".join(
            f"GPU {self._gpu_by_uuid[uuid].index} ({count})" for uuid, count in by_gpu.items()
        )

    def _grant(self, allocation: Allocation, mps: MpsDirs | None = None) -> Grant:
        ordered = sorted(allocation.units_by_gpu, key=lambda uuid: self._gpu_by_uuid[uuid].index)
        envs: dict[str, str] = {}
        mounts: list[MountSpec] = []
        if allocation.kind is Kind.CORE:
            envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(ordered)
            envs["GPUSHARE_CORE_LIMIT"] = str(allocation.core_limit)
            envs["GPUSHARE_CORE_SOFT_LIMIT"] = str(allocation.core_soft_limit)
            envs["GPUSHARE_STATE_DIR"] = self.paths.container_state_dir
            envs["GPUSHARE_ALLOCATION_ID"] = allocation.id
            envs["GPUSHARE_USAGE_DIR"] = self.paths.container_usage_dir
            if allocation.sm_partition:
                # honoured by the CUDA driver only in a client of an MPS server
                envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(allocation.sm_partition)
            if mps is not None:
                pipe = f"{self.paths.container_mps_dir}/pipe"
                logs = f"{self.paths.container_mps_dir}/log"
                envs["CUDA_MPS_PIPE_DIRECTORY"] = pipe
                envs["CUDA_MPS_LOG_DIRECTORY"] = logs
                mounts.append(MountSpec(pipe, str(mps.pipe), read_only=False))
                mounts.append(MountSpec(logs, str(mps.log), read_only=True))
            mounts.append(
                MountSpec(self.paths.container_state_dir, allocation.state_dir, read_only=False)
            )
            if allocation.core_limit < CORE_UNITS_PER_GPU:
                if self._scheduler_socket is not None:
                    envs["GPUSHARE_SCHEDULER_SOCKET"] = (
                        f"{self.paths.container_state_dir}/{self._scheduler_socket}"
                    )
                envs["LD_PRELOAD"] = f"{self.paths.container_hook_dir}/{HOOK_LIBRARY_NAME}"
                mounts.append(
                    MountSpec(
                        self.paths.container_hook_dir,
                        str(self.paths.hook_library_dir),
                        read_only=True,
                    )
                )
        else:
            limits = [allocation.units_by_gpu[uuid] * MEMORY_UNIT_BYTES for uuid in ordered]
            envs["GPUSHARE_MEMORY_LIMIT"] = str(min(limits))
            if len(limits) > 1:
                for position, limit in enumerate(limits):
                    envs[f"GPUSHARE_MEMORY_LIMIT_{position}"] = str(limit)
        return Grant(allocation_id=allocation.id, envs=envs, mounts=tuple(mounts))

    def release(self, allocation_id: str) -> None:
        """Forget an allocation (used when a multi-container Allocate fails half-way)."""
        with self._lock:
            allocation = self._ledger.release(allocation_id)
            self._pod_cache = None  # its pods may match again now
            if allocation is not None:
                _remove_state_dir(allocation, self.paths.state_root)
                self._allocations_changed()

    # --- reconcile -------------------------------------------------------------------------
    def reconcile(self) -> bool:
        """Confirm owners through kubelet's PodResources and release allocations of pods that
        are gone. Returns False when kubelet could not be asked (nothing is released then)."""
        if self._pod_resources is None:
            return False
        try:
            reported = self._pod_resources.list_devices()
        except KubernetesError as err:
            # Said once per outage (and again if the failure changes), not every period: a node
            # without kubelet, such as a demo with simulated GPUs, would repeat it forever.
            if str(err) != self._reconcile_error:
                log.warning("cannot reconcile allocations (said once until it changes): %s", err)
            else:
                log.debug("cannot reconcile allocations: %s", err)
            self._reconcile_error = str(err)
            return False
        if self._reconcile_error is not None:
            log.info("reconciling allocations again: kubelet's PodResources answers")
            self._reconcile_error = None
        holders: dict[tuple[Kind, str], ContainerKey] = {}
        for entry in reported:
            for kind in Kind:
                if entry.resource_name == kind.resource_name:
                    for device in entry.device_ids:
                        holders[(kind, device)] = (entry.namespace, entry.pod, entry.container)
        now = self._clock()
        with self._lock:
            changed = False
            for allocation in list(self._ledger.allocations.values()):
                owners = {
                    holders[(allocation.kind, device)]
                    for device in allocation.device_ids
                    if (allocation.kind, device) in holders
                }
                if owners:
                    namespace, pod, container = sorted(owners)[0]
                    old = allocation.owner
                    same_pod = old is not None and (old.namespace, old.pod) == (namespace, pod)
                    uid = old.uid if same_pod and old is not None else ""
                    owner = Owner(namespace, pod, container, uid, confirmed=True)
                    if owner != old:
                        self._ledger.set_owner(allocation.id, owner)
                        changed = True
                elif now - allocation.created_at >= self._grace:
                    log.info(
                        "allocation %s of %s released: kubelet no longer reports its devices",
                        allocation.id,
                        allocation.owner.describe() if allocation.owner else "unknown container",
                    )
                    self._ledger.release(allocation.id)
                    self._pod_cache = None
                    _remove_state_dir(allocation, self.paths.state_root)
                    changed = True
            changed = self._adopt(holders, now) or changed
            if changed:
                self._allocations_changed()
        return True

    def _adopt(self, holders: dict[tuple[Kind, str], ContainerKey], now: float) -> bool:
        """Record devices kubelet reports but the ledger lacks (a checkpoint lost or older
        than the last Allocate), so that placement and capacity count them."""
        unknown: dict[tuple[Kind, ContainerKey], list[DeviceId]] = {}
        for (kind, text), holder in holders.items():
            device = self._device_index.get(text)
            if device is not None and self._ledger.holder(kind, text) is None:
                unknown.setdefault((kind, holder), []).append(device)
        for (kind, (namespace, pod, container)), devices in unknown.items():
            by_gpu: dict[str, int] = {}
            for device in devices:
                by_gpu[device.gpu_uuid] = by_gpu.get(device.gpu_uuid, 0) + 1
            limit = _core_limit(kind, len(devices))
            self._ledger.add(
                Allocation(
                    id=uuid.uuid4().hex[:16],
                    kind=kind,
                    device_ids=tuple(str(device) for device in devices),
                    units_by_gpu=by_gpu,
                    created_at=now,
                    owner=Owner(namespace, pod, container, confirmed=True),
                    core_limit=limit,
                    core_soft_limit=limit,
                )
            )
            log.info(
                "adopted %d %s held by %s/%s/%s",
                len(devices),
                kind.resource_name,
                namespace,
                pod,
                container,
            )
        return bool(unknown)

    # --- pod annotation ----------------------------------------------------------------------
    def _mark_allocated(self, namespace: str, pod: str) -> None:
        """Tell the extender (through the pod) that every container got its GPUs; written by
        a background thread, never on kubelet's path."""
        if self._annotator is None:
            return
        with self._marks_ready:
            self._marks.append((namespace, pod, self.node_name))
            if self._marker is None:
                self._marker = threading.Thread(target=self._send_marks, daemon=True)
                self._marker.start()
            self._marks_ready.notify()

    def _send_marks(self) -> None:
        assert self._annotator is not None
        while True:
            with self._marks_ready:
                self._marks_ready.wait_for(lambda: bool(self._marks))
                namespace, pod, node = self._marks.pop(0)
            try:
                self._annotator.annotate_pod(namespace, pod, {POD_GPU_ALLOCATED: node})
            except KubernetesError as err:
                log.warning("cannot mark pod %s/%s allocated: %s", namespace, pod, err)

    # --- node annotation ---------------------------------------------------------------------
    def inventory_annotation(self) -> str:
        with self._lock:
            healthy = dict(self._healthy)
        return format_inventory(
            InventoryDocument(
                policy=self.policy.value,
                gpus=tuple(
                    InventoryGpu(
                        index=gpu.index,
                        uuid=gpu.uuid,
                        memory=gpu.memory_units,
                        healthy=healthy[gpu.uuid],
                    )
                    for gpu in self.gpus
                ),
            )
        )

    def publish(self, *, force: bool = False) -> bool:
        """Write the GPU inventory on the node when it changed (at start, and when a GPU's
        health changes; never on an allocation); True when written."""
        if self._publisher is None:
            return False
        text = self.inventory_annotation()
        if text == self._published and not force:
            return False
        try:
            self._publisher.annotate_node(self.node_name, {NODE_GPU_INVENTORY: text})
        except KubernetesError as err:
            log.warning("cannot publish the GPU inventory: %s", err)
            return False
        self._published = text
        return True


ContainerKey = tuple[str, str, str]


def _core_limit(kind: Kind, size: int) -> int:
    if kind is not Kind.CORE:
        return 0
    return size if size < CORE_UNITS_PER_GPU else CORE_UNITS_PER_GPU


def _pick(
    available: Sequence[DeviceId],
    required: Sequence[DeviceId],
    wanted: dict[str, int],
    size: int,
    kind: Kind,
) -> list[str]:
    """`size` IDs: the required ones, then the lowest-numbered available ones of each wanted
    GPU up to its share."""
    chosen = [str(device) for device in required]
    left = dict(wanted)
    for device in required:
        left[device.gpu_uuid] = left.get(device.gpu_uuid, 0) - 1
    taken = set(chosen)
    # only the wanted GPUs' devices are sorted (a node offers thousands of memory devices)
    candidates = [device for device in available if left.get(device.gpu_uuid, 0) > 0]
    for device in sorted(candidates, key=lambda item: (item.gpu_uuid, item.number)):
        if left[device.gpu_uuid] > 0:
            text = str(device)
            if text not in taken:
                chosen.append(text)
                left[device.gpu_uuid] -= 1
    if len(chosen) != size:
        raise DoesNotFitError(
            f"{kind.resource_name}: {size} devices asked, but the chosen GPU(s) have only "
            f"{len(chosen)} of them available"
        )
    return chosen


def _remove_state_dir(allocation: Allocation, state_root: Path) -> None:
    if not allocation.state_dir:
        return
    path = Path(allocation.state_dir)
    if path.parent == state_root:
        shutil.rmtree(path, ignore_errors=True)
