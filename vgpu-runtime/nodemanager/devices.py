"""Device IDs offered to kubelet: each one names its GPU, so an allocation says where it is.

`tencent.com/vcuda-core` offers 100 devices per GPU (1 % each) named `<GPU UUID>-core-<n>`;
`tencent.com/vcuda-memory` offers one device per 256 MiB named `<GPU UUID>-mem-<n>`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gpushare.resources import CORE_UNITS_PER_GPU, VCUDA_CORE, VCUDA_MEMORY
from nodemanager.inventory import Gpu


class Kind(StrEnum):
    """The two resources the node manager serves."""

    CORE = "core"
    MEMORY = "mem"

    @property
    def resource_name(self) -> str:
        return VCUDA_CORE if self is Kind.CORE else VCUDA_MEMORY


@dataclass(frozen=True)
class DeviceId:
    """A parsed device ID."""

    gpu_uuid: str
    kind: Kind
    number: int

    def __str__(self) -> str:
        return f"{self.gpu_uuid}-{self.kind.value}-{self.number}"


class UnknownDeviceError(ValueError):
    """A device ID that this node never offered."""


SHOWN_ID_CHARACTERS = 80
"""Messages and logs quote at most this much of a device ID they refuse."""


def shown_id(text: str) -> str:
    """`text` quoted for a message, cut to SHOWN_ID_CHARACTERS: a refused ID comes from the
    caller and may be of any length."""
    if len(text) <= SHOWN_ID_CHARACTERS:
        return repr(text)
    return f"{text[:SHOWN_ID_CHARACTERS]!r}... ({len(text)} characters)"


def device_ids(gpu: Gpu, kind: Kind) -> list[str]:
    """Every device ID of `kind` that `gpu` offers."""
    count = CORE_UNITS_PER_GPU if kind is Kind.CORE else gpu.memory_units
    return [str(DeviceId(gpu.uuid, kind, number)) for number in range(count)]


def parse_device_id(text: str, kind: Kind, gpus: Sequence[Gpu]) -> DeviceId:
    """Parse and check an ID of `kind` against this node's GPUs."""
    head, sep, number_text = text.rpartition("-")
    uuid, sep2, kind_text = head.rpartition("-")
    gpu = next((gpu for gpu in gpus if gpu.uuid == uuid), None)
    # Only the exact spelling offered: no leading zeros, signs or non-ASCII digits.
    canonical = (
        number_text.isascii() and number_text.isdigit() and str(int(number_text)) == number_text
    )
    if not (sep and sep2 and canonical) or kind_text != kind.value or gpu is None:
        raise UnknownDeviceError(
            f"unknown {kind.resource_name} device ID {shown_id(text)}: this node offers "
            f"'<GPU UUID>-{kind.value}-<n>' for GPUs {', '.join(g.uuid for g in gpus)}"
        )
    number = int(number_text)
    limit = CORE_UNITS_PER_GPU if kind is Kind.CORE else gpu.memory_units
    if number >= limit:
        raise UnknownDeviceError(
            f"unknown {kind.resource_name} device ID {shown_id(text)}: GPU {gpu.index} offers "
            f"numbers 0..{limit - 1}"
        )
    return DeviceId(uuid, kind, number)


def units_by_gpu(ids: Iterable[DeviceId]) -> dict[str, int]:
    """How many devices of the IDs lie on each GPU (by UUID)."""
    counts: dict[str, int] = {}
    for device in ids:
        counts[device.gpu_uuid] = counts.get(device.gpu_uuid, 0) + 1
    return counts
