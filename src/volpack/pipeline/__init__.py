"""Wires the stages for each verb, one module per verb; returns typed results.

backup:  Source → used map → AddressTable → [Staging] → ArchiveWriter → Medium
restore: Medium → ArchiveStream → tables → scatter frames → Target
verify:  Medium → ArchiveStream → frames checked (and compared with a volume)
map:     Source → used map and physical map
info:    Medium → footer, trailer, tables (or the head of a stream) → summary
Library code: no printing; progress and notices go through callbacks.
"""

from __future__ import annotations

from volpack.pipeline.backup import BackupResult, backup
from volpack.pipeline.info import summary
from volpack.pipeline.map import VolumeMap, map_volume
from volpack.pipeline.restore import RestoreResult, restore, restore_physical
from volpack.pipeline.verify import VerifyResult, verify

__all__ = [
    "BackupResult",
    "RestoreResult",
    "VerifyResult",
    "VolumeMap",
    "backup",
    "map_volume",
    "restore",
    "restore_physical",
    "summary",
    "verify",
]
