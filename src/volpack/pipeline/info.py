"""``info``: an archive's summary (header, sizes, tables, description) as a JSON-able dict.

Random access (footer → trailer → tables) when the medium has a size, so the whole archive is
known complete; from a stream, the head only. Reads nothing but the archive; no printing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from volpack.format import records as R
from volpack.format.description import ArchiveDescription
from volpack.physmap import PhysicalMap

if TYPE_CHECKING:
    from volpack.format.keyring import Keyring


def summary(archive_url: str, keyring: Keyring | None = None) -> dict[str, Any]:
    """What ``volpack info --json`` prints: uuid, format, created, sizes, codec, table runs,
    devices, the recorded source and detection, tool, host; ``complete`` (True after random
    access, None from a stream) with archive_size, stored_bytes, frames and digest as known.
    An encrypted archive opened without ``keyring`` shows its public fields only: what its
    sealed records hold (tables, source, detection, tool, host) is None."""
    # Stages load on first use, so that importing the pipeline stays fast (see backup.py).
    from volpack.format.random_access import Archive
    from volpack.format.reader import ArchiveStream
    from volpack.format.records import CODECS
    from volpack.media import open_reader

    medium = open_reader(archive_url)
    pmap: PhysicalMap | None
    desc: ArchiveDescription
    try:
        if medium.size is not None:
            a = Archive(medium, keyring=keyring, public=True)
            sealed, key_slots = a.sealed, a.key_slots
            h, desc, table, pmap = a.header, a.desc, a.table, a.physical_map
            extra = {
                "complete": True,
                "archive_size": a.archive_size,
                "stored_bytes": a.stored_bytes,
                "frames": a.trailer.frame_count,
                "digest": a.digest,
                "state_digest": a.state_digest or None,
                "hash_table_entries": len(a.hash_table.entries) if a.hash_table else None,
            }
        else:
            head = ArchiveStream(medium, keyring=keyring, public=True).read_head()
            sealed, key_slots = head.sealed, head.key_slots
            h, desc, table, pmap = head.header, head.desc, head.table, None
            extra = {"complete": None, "frames": h.frame_count}
    finally:
        medium.close()
    used = table.used_bytes(h.volume_size).total()  # the last block may be partial
    result = {
        "uuid": h.uuid,
        "format": f"{h.major}.{h.minor}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(h.created_ns / 1e9)),
        "volume_size": h.volume_size,
        "block_size": h.block_size,
        "frame_size": h.frame_size,
        "used_blocks": h.used_blocks,
        "used_bytes": used,
        "codec": CODECS[h.codec] + (f":{h.codec_level}" if h.codec else ""),
        "address_table_runs": len(table),
        "physical_map_runs": len(pmap) if pmap is not None else None,
        "devices": list(pmap.devices) if pmap is not None else None,
        "source": desc.source.to_json(),
        "detection": desc.detection.to_json(),
        **_chain(h, desc),
        "tool": desc.tool,
        "host": desc.host,
        **extra,
        "encrypted": h.encrypted,
        # Public, with or without a key: what the catalog records (never a key or secret).
        "key_slots": [_slot(fp) for fp in key_slots] if h.encrypted else None,
    }
    if sealed:  # read without a key: what the sealed records hold is not known
        for key in ("used_bytes", "address_table_runs", "physical_map_runs", "devices"):
            result[key] = None
        result.update(source={}, detection={}, tool=None, host=None, hash_table_entries=None)
        if result.get("changes") is not None or h.incremental:
            result["changes"] = None
    return result


def _slot(fingerprint: str) -> dict[str, str]:
    """A slot as ``info`` shows it: its kind and its fingerprint (``KIND:32 hex digits``)."""
    return {"kind": fingerprint.split(":", 1)[0], "fingerprint": fingerprint}


def _chain(h: R.Header, desc: ArchiveDescription) -> dict[str, Any]:
    """Where the archive sits in its chain: level, chain id, sequence, base link, changes."""
    if not h.hashed:
        return {"level": "full", "chain_id": None, "chain_seq": None, "base": None}
    base = h.base
    return {
        "level": "incremental" if h.incremental else "full",
        "chain_id": h.chain_id,
        "chain_seq": h.chain_seq,
        "hash_block_size": h.hash_block_size,
        "base": None
        if base is None
        else {
            "uuid": base.uuid,
            "digest": base.digest.hex(),
            "state_digest": base.state_digest.hex(),
            "volume_size": base.volume_size,
        },
        "changes": desc.changes.to_json() if desc.changes is not None else None,
    }
