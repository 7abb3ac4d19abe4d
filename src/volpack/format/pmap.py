"""The physical map on the medium: ``PhysicalMap`` ↔ the PMAP record (docs/format.md §3.2).

The one place that turns the value into PMAP runs and back: an unknown physical offset is ``-1``
in the value and ``2^64 − 1`` on the medium; a run with no device (-1) reads with offset -1. Byte layout and checks are ``records``'; no I/O.
"""

from __future__ import annotations

import numpy as np

from volpack.format import records as R
from volpack.physmap import PhysicalMap


def encode_pmap(pmap: PhysicalMap) -> bytes:
    """The PMAP record (header and payload) for ``pmap``."""
    runs = np.zeros(len(pmap), R.PMAP_DTYPE)
    runs["volume_offset"] = pmap.starts
    runs["length"] = pmap.lengths
    runs["physical"] = np.where(
        pmap.offsets < 0, np.uint64(R.UNKNOWN_OFFSET), pmap.offsets.astype(np.uint64)
    )
    runs["device"] = pmap.device
    runs["flags"] = pmap.flags
    return R.encode_pmap(pmap.devices, runs)


def decode_pmap(payload: bytes, header: R.Header, where: str) -> PhysicalMap:
    """The checked PMAP ``payload`` of an archive with ``header`` as a ``PhysicalMap``."""
    devices, runs = R.decode_pmap(payload, header, where)
    device = runs["device"].astype(np.int32)
    offsets = runs["physical"].astype(np.int64)  # UNKNOWN_OFFSET wraps to -1
    offsets[device < 0] = -1  # no device, no place: whatever offset was written means nothing
    return PhysicalMap(
        devices=devices,
        starts=runs["volume_offset"].astype(np.int64),
        lengths=runs["length"].astype(np.int64),
        device=device,
        offsets=offsets,
        flags=runs["flags"].astype(np.uint32),
    )
