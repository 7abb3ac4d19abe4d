"""Wires the stages for each verb, one module per verb; returns typed results.

backup:  Source → used map → AddressTable → [Staging] → ArchiveWriter → Medium
restore: Medium → ArchiveStream → tables → scatter frames → Target
verify:  Medium → ArchiveStream → frames checked (and compared with a volume)
map:     Source → used map and physical map
Library code: no printing; progress and notices go through callbacks.
"""

from __future__ import annotations

from volpack.pipeline.backup import BackupResult, backup
from volpack.pipeline.common import (
    DEFAULT_BLOCK,
    DEFAULT_COMPRESS,
    DEFAULT_FRAME,
    Progress,
    check_block_size,
    medium_roles,
    parse_compress,
)
from volpack.pipeline.map import VolumeMap, map_volume
from volpack.pipeline.restore import RestoreResult, check_expected, restore
from volpack.pipeline.verify import VerifyResult, verify

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_COMPRESS",
    "DEFAULT_FRAME",
    "BackupResult",
    "Progress",
    "RestoreResult",
    "VerifyResult",
    "VolumeMap",
    "backup",
    "check_block_size",
    "check_expected",
    "map_volume",
    "medium_roles",
    "parse_compress",
    "restore",
    "verify",
]
