"""Rollback detection: a medium offering an older link of a chain than the catalog recorded.

The catalog keeps each chain's highest sequence (``chain_heads``); when a caller asked for the
newest archive and the location holds another archive of the same chain with a lower sequence,
this names both sequences. It reads nothing itself and never writes.
"""

from __future__ import annotations

from volpack.catalog.store import Catalog
from volpack.errors import ArchiveRolledBack
from volpack.format import records as R


def rolled_back(
    catalog: Catalog, header: R.Header, url: str, asked: str
) -> ArchiveRolledBack | None:
    """The error to raise when ``header`` (read at ``url``, where the catalog expects archive
    ``asked``) is an older link of a chain than the newest the catalog recorded; else None."""
    if header.uuid == asked:
        return None
    return older_link(catalog, header.uuid, header.chain_id, header.chain_seq, url)


def older_link(
    catalog: Catalog, uuid: str, chain_id: str | None, chain_seq: int | None, url: str
) -> ArchiveRolledBack | None:
    """The error when archive ``uuid`` (link ``chain_seq`` of ``chain_id``), found at ``url``
    where a newer archive was asked for, is older than the chain's newest recorded link."""
    if not chain_id or chain_seq is None:
        return None
    head = catalog.chain_head(chain_id)
    if head is None or chain_seq >= head.chain_seq:
        return None
    return ArchiveRolledBack(
        f"{url}: holds archive {uuid}, sequence {chain_seq} of chain "
        f"{chain_id}, but {catalog.path} recorded sequence {head.chain_seq} of that chain "
        f"(archive {head.uuid}): the medium offers an older state than the newest (rolled back "
        "or a stale copy put back); nothing was written; find the newest copy, or give the "
        "location itself to use the older archive on purpose"
    )
