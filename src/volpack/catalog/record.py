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
from typing import TYPE_CHECKING, Any, Protocol

from volpack.catalog.store import ArchiveEntry
from volpack.errors import UsageError
from volpack.format.description import ArchiveDescription, SourceDescription
from volpack.format.records import MAJOR, MINOR
from volpack.media import canonical_url

if TYPE_CHECKING:
    from volpack.format.random_access import Archive

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


def fs_uuid_of(description: ArchiveDescription) -> str | None:
    """The filesystem UUID if the archive's description names one: the source details, else the
    first detection region whose details carry a ``uuid`` (a partitioned disk may hold several;
    the full description stays in the catalog)."""
    details = description.source.details
    candidates: list[Any] = [details.get(k) for k in ("fs_uuid", "filesystem_uuid", "uuid")]
    for region in description.detection.regions:
        candidates += [region.details.get(k) for k in ("fs_uuid", "uuid")]
    for value in candidates:
        if isinstance(value, str) and value:
            return value
    return None


def _source_of(*sources: SourceDescription) -> tuple[str, str]:
    """Path and kind of the first source that names a path."""
    for src in sources:
        if src.path:
            return src.path, src.kind or "unknown"
    return "unknown", "unknown"


def entry_from_result(
    result: BackupResultLike, description: Mapping[str, Any] | None = None
) -> ArchiveEntry:
    """The catalog entry for a backup that just finished (``pipeline.backup.BackupResult``).
    Without a ``description`` (the archive's DESC object), the result's ``source`` and
    ``detection`` stand in for it."""
    given = SourceDescription.from_json(result.source)
    if description is None:
        description = {
            "source": result.source,
            "detection": getattr(result, "detection", None) or {},
        }
        changes = getattr(result, "changes", None)
        if isinstance(changes, dict) and changes:  # as the archive's DESC records it
            description["changes"] = changes
    desc = ArchiveDescription.from_json(description)
    path, kind = _source_of(given, desc.source)
    created_ns = getattr(result, "created_ns", None)  # a BackupResult has it; duck types may not
    if isinstance(created_ns, int) and created_ns > 0:
        created: float | None = created_ns / 1e9
    else:
        created = _created_from(desc)
    if created is None:
        created = time.time() - float(result.elapsed or 0.0)
    return ArchiveEntry(
        uuid=str(result.archive_uuid),
        created=float(created),
        source_path=source_key(path) if kind in ("file", "blockdev", "unknown") else path,
        source_kind=kind,
        volume_size=int(result.volume_size),
        block_size=int(result.block_size),
        used_blocks=int(result.used_blocks),
        format_version=getattr(result, "format_version", f"{MAJOR}.{MINOR}"),
        urls=(canonical_url(result.url),) if result.url and result.url != "-" else (),
        fs_uuid=fs_uuid_of(desc),
        archive_size=int(result.archive_size),
        stored_bytes=int(result.stored_bytes),
        digest=str(result.digest) if result.digest else None,
        description=dict(description),
        encrypted=bool(getattr(result, "encrypted", False)),
        key_slots=tuple(getattr(result, "key_slots", ()) or ()),
        **_chain_of_result(result, desc),
    )


def _kind(incremental: bool, desc: ArchiveDescription) -> str:
    """full, incremental, or merged: a full that a merge wrote from a chain."""
    if incremental:
        return "incremental"
    return "merged" if desc.changes is not None and desc.changes.method == "merge" else "full"


def _chain_of_result(result: BackupResultLike, desc: ArchiveDescription) -> dict[str, Any]:
    """The chain columns from a ``BackupResult`` (read with getattr: duck types may lack them;
    then the chain is not known, and prune asks for a rebuild before trusting it)."""
    chain_id = getattr(result, "chain_id", None)
    if not isinstance(chain_id, str):
        return {"kind": None, "chain_seq": None}
    base = getattr(result, "base_uuid", None) or None
    return {
        "kind": _kind(base is not None, desc),
        "chain_id": chain_id or None,
        "chain_seq": int(getattr(result, "chain_seq", 0) or 0),
        "base_uuid": base,
        "base_digest": getattr(result, "base_digest", None) or None,
        "base_state_digest": getattr(result, "base_state_digest", None) or None,
        "state_digest": getattr(result, "state_digest", None) or None,
    }


def entry_from_archive(archive: Archive, url: str) -> ArchiveEntry:
    """The catalog entry for an archive opened with ``open_archive`` (what rebuild records)."""
    header = archive.header
    path, kind = _source_of(archive.desc.source)
    if header.created_ns > 0:
        created = header.created_ns / 1e9
    else:
        created = _created_from(archive.desc) or 0.0
    return ArchiveEntry(
        uuid=archive.uuid,
        created=created,
        source_path=path,
        source_kind=kind,
        volume_size=archive.size,
        block_size=archive.block_size,
        used_blocks=archive.header.used_blocks,  # public, also in a sealed archive
        format_version=f"{header.major}.{header.minor}",
        urls=(url,),
        fs_uuid=fs_uuid_of(archive.desc),
        archive_size=archive.archive_size,
        stored_bytes=archive.stored_bytes,
        digest=archive.digest or None,
        description=dict(archive.description),  # as the archive records it
        kind=_kind(header.incremental, archive.desc),
        chain_id=header.chain_id or None,
        chain_seq=header.chain_seq,
        base_uuid=header.base.uuid if header.base else None,
        base_digest=header.base.digest.hex() if header.base else None,
        base_state_digest=header.base.state_digest.hex() if header.base else None,
        state_digest=archive.state_digest or None,
        encrypted=header.encrypted,
        key_slots=archive.key_slots,  # public: read from the KEYS record without a key
    )


def _created_from(description: ArchiveDescription) -> float | None:
    """A ``created`` time some other writer put in the description (seconds or ISO 8601)."""
    value = description.extra.get("created")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


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
