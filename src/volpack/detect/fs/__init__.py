"""Filesystem detectors: one module per filesystem, each with ``probe(area)`` and ``analyse(area)``.

``probe`` is a cheap signature check; ``analyse`` reads the allocation metadata and returns an
``FsResult`` (absolute byte runs in use) or raises ``FsDamaged``. Detectors only read.
"""

from __future__ import annotations

from types import ModuleType

from volpack.detect.fs import btrfs, ext, fat, ntfs, swap, xfs

# Probe order does not matter for correctness: two matching signatures mean "ambiguous".
FILESYSTEMS: tuple[tuple[str, ModuleType], ...] = (
    ("ntfs", ntfs),
    ("fat", fat),
    ("ext", ext),
    ("xfs", xfs),
    ("btrfs", btrfs),
    ("swap", swap),
)
