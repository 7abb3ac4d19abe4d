"""How one archive is laid out in S3: the names of its objects and the metadata that ties them.

An archive is the object at its key, continued in ``key.part2``, ``key.part3`` … when it is larger
than one object may be; each object carries the archive's split id and its own index. The writer,
the reader and the listing read these names from here; nothing here talks to S3.
"""

from __future__ import annotations

import re

# Object metadata (x-amz-meta-…) that ties the numbered objects of one archive together.
META_SPLIT_ID = "volpack-split-id"
META_OBJECT_SIZE = "volpack-object-size"
META_INDEX = "volpack-object-index"

_CONTINUATION = re.compile(r"^(?P<base>.+)\.part(?P<n>[0-9]+)$")


def continuation_key(key: str, index: int) -> str:
    """Object ``index`` (1-based) of an archive: the key itself, then ``key.part2``, …"""
    return key if index == 1 else f"{key}.part{index}"


def continuation_index(key: str, base: str) -> int:
    """The index of ``key`` as a continuation of the archive at ``base``; 0 when it is not one."""
    m = _CONTINUATION.match(key)
    if m is None or m.group("base") != base:
        return 0
    return int(m.group("n"))


def continued_base(key: str) -> str | None:
    """The archive key that ``key`` would continue (``a.vpk.part2`` → ``a.vpk``), else None."""
    m = _CONTINUATION.match(key)
    return None if m is None else m.group("base")
