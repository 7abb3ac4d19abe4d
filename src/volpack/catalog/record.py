"""Turning backup results and opened archives into catalog entries; catalog path and time parsing.

Reads attributes of results and archive headers only; it never opens media or the catalog itself
(the callers in ``volpack.catalog`` do).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol

from volpack.catalog.store import ArchiveEntry
from volpack.errors import UsageError
from volpack.media import canonical_url

ENV_CATALOG = "VOLPACK_CATALOG"


def default_path() -> str:
    """``$VOLPACK_CATALOG``, else ``$XDG_DATA_HOME/volpack/catalog.sqlite``, else
    ``~/.local/share/volpack/catalog.sqlite``."""
    explicit = os.environ.get(ENV_CATALOG)
    if explicit:
        return explicit
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(data, "volpack", "catalog.sqlite")


def catalog_path(option: str | None) -> str:
    """The catalog to use: the ``--catalog`` option when given, else the default."""
    return option if option else default_path()


class BackupResultLike(Protocol):
    archive_uuid: str
    url: str
    volume_size: int
    block_size: int
    used_blocks: int
    archive_size: int
    stored_bytes: int
    digest: str
    elapsed: float
    source: dict[str, Any]


def source_key(path: str) -> str:
    """The identity of a volume in the catalog: an absolute path for plain paths, else as given
    (``lvm:vg/lv``, URLs), so that ``--source disk.img`` and the recorded path match."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", path):
        return path
    return os.path.abspath(path)


def fs_uuid_of(description: Mapping[str, Any]) -> str | None:
    """The filesystem UUID if the archive's description names one: the source details, else the
    first detection region whose details carry a ``uuid`` (a partitioned disk may hold several;
    the full description stays in the catalog)."""
    candidates: list[Any] = []
    source = description.get("source")
    if isinstance(source, Mapping):
        details = source.get("details")
        if isinstance(details, Mapping):
            candidates += [details.get(k) for k in ("fs_uuid", "filesystem_uuid", "uuid")]
    detection = description.get("detection")
    regions = detection.get("regions") if isinstance(detection, Mapping) else None
    if isinstance(regions, list):
        for region in regions:
            details = region.get("details") if isinstance(region, Mapping) else None
            if isinstance(details, Mapping):
                candidates += [details.get(k) for k in ("fs_uuid", "uuid")]
    for value in candidates:
        if isinstance(value, str) and value:
            return value
    return None


def _source_of(description: Mapping[str, Any], fallback: Mapping[str, Any]) -> tuple[str, str]:
    for src in (fallback, description.get("source")):
        if isinstance(src, Mapping) and src.get("path"):
            return str(src["path"]), str(src.get("kind") or "unknown")
    return "unknown", "unknown"


def entry_from_result(
    result: BackupResultLike, description: Mapping[str, Any] | None = None
) -> ArchiveEntry:
    """The catalog entry for a backup that just finished (``pipeline.BackupResult``). Without a
    ``description``, the result's ``source`` and ``detection`` stand in for the archive's DESC."""
    if description is None:
        description = {
            "source": getattr(result, "source", None) or {},
            "detection": getattr(result, "detection", None) or {},
        }
    path, kind = _source_of(description, getattr(result, "source", None) or {})
    created_ns = getattr(result, "created_ns", None)
    if isinstance(created_ns, int) and created_ns > 0:
        created: float | None = created_ns / 1e9
    else:
        created = _created_from(description)
    if created is None:
        created = time.time() - float(result.elapsed or 0.0)
    version = getattr(result, "format_version", None)
    if version is None:
        from volpack.format.records import MAJOR, MINOR

        version = (MAJOR, MINOR)
    return ArchiveEntry(
        uuid=str(result.archive_uuid),
        created=float(created),
        source_path=source_key(path) if kind in ("file", "blockdev", "unknown") else path,
        source_kind=kind,
        volume_size=int(result.volume_size),
        block_size=int(result.block_size),
        used_blocks=int(result.used_blocks),
        format_version=_version_from(description, version),
        urls=(canonical_url(result.url),) if result.url and result.url != "-" else (),
        fs_uuid=fs_uuid_of(description),
        archive_size=int(result.archive_size),
        stored_bytes=int(result.stored_bytes),
        digest=str(result.digest) if result.digest else None,
        description=dict(description),
    )


def entry_from_archive(archive: Any, url: str) -> ArchiveEntry:
    """The catalog entry for an archive opened with ``open_archive`` (what rebuild records)."""
    header = archive.header
    description = archive.description if isinstance(archive.description, Mapping) else {}
    path, kind = _source_of(description, {})
    used_blocks = int(archive.used.total())
    created = _header_time(header)
    if created is None:
        created = _created_from(description) or 0.0
    return ArchiveEntry(
        uuid=str(archive.uuid),
        created=float(created),
        source_path=path,
        source_kind=kind,
        volume_size=int(archive.size),
        block_size=int(archive.block_size),
        used_blocks=used_blocks,
        format_version=_version_from(description, _header_version(header)),
        urls=(url,),
        fs_uuid=fs_uuid_of(description),
        archive_size=int(archive.archive_size),
        stored_bytes=_int_or_none(getattr(archive, "stored_bytes", None)),
        digest=str(archive.digest) if archive.digest else None,
        description=dict(description),
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _header_time(header: Any) -> float | None:
    ns = getattr(header, "created_ns", None)
    if isinstance(ns, int) and ns > 0:
        return ns / 1e9
    for name in ("created", "created_time", "ctime", "time"):
        value = getattr(header, name, None)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, int | float) and not isinstance(value, bool):
            # Nanoseconds or microseconds since the epoch are both plausible on-disk encodings.
            return value / 1e9 if value > 1e14 else (value / 1e6 if value > 1e11 else float(value))
    return None


def _header_version(header: Any) -> Any:
    version = getattr(header, "version", None)
    if version is None and hasattr(header, "major"):
        version = (header.major, getattr(header, "minor", 0))
    return version


def _created_from(description: Mapping[str, Any]) -> float | None:
    value = description.get("created")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def _version_from(description: Mapping[str, Any], version: Any) -> str:
    if isinstance(version, tuple):
        return ".".join(str(v) for v in version)
    if version is not None:
        return str(version)
    value = description.get("format_version")
    return str(value) if value is not None else "unknown"


def parse_time(text: str, now: float | None = None) -> float:
    """Seconds since the epoch from ``now``, ``@SECONDS``, or ISO 8601 (``2024-05-01``,
    ``2024-05-01T13:30``, ``2024-05-01 13:30:00+02:00``). Without a zone it is local time; a bare
    date means the end of that day, so ``--at 2024-05-01`` finds that day's last backup."""
    value = text.strip()
    if value == "now":
        return time.time() if now is None else now
    if value.startswith("@"):
        try:
            return float(value[1:])
        except ValueError:
            pass
    else:
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                day = dt.datetime.fromisoformat(value) + dt.timedelta(days=1)
                return day.timestamp() - 1e-6
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed.timestamp()
        except ValueError:
            pass
    raise UsageError(
        f"time '{text}': not understood; use ISO 8601 like 2024-05-01 or 2024-05-01T13:30, "
        "'now', or @SECONDS"
    )
