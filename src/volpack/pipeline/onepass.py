"""A full backup that reads the source once where a zero scan must run: frames are written
straight from the scan into room the medium left after a provisional head, and the head (whose
address table the scan has only now learnt) is written last, padded to fill its room exactly
(docs/architecture.md, "One read"). Media that write in order only, and used maps with more runs
than the room holds, take the two-read way (scan, then copy); the archive is a 1.4 archive
either way, byte for byte of the same layout.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from volpack.compact.onepass import Framer, TooManyRuns
from volpack.compact.table import AddressTable
from volpack.detect import Plan
from volpack.format import records as R
from volpack.format.hashtable import HashBuilder
from volpack.format.writer import ArchiveWriter, WriteResult
from volpack.media.base import MediumWriter
from volpack.pipeline.common import Progress
from volpack.source.base import Source

# Address table runs the room allows beyond the estimate: one per this many candidate blocks
# (24 B per MiB of 4 KiB candidate blocks, so at most 0.003 % of an archive is padding).
_RUNS_PER_BLOCKS = 256
_ATAB_RUN = R.ATAB_DTYPE.itemsize


@dataclass(frozen=True, slots=True)
class OnePass:
    header: R.Header
    table: AddressTable
    written: WriteResult


def room_runs(plan: Plan, desc_length: int) -> int:
    """Address table runs the head's room is made for: the known runs, two for every candidate
    run (a zero scan can split it), one for every ``_RUNS_PER_BLOCKS`` candidate blocks; at most
    what DESC's bound lets padding make up when fewer are found."""
    estimate = len(plan.known) + 2 * len(plan.scan) + plan.scan.total() // _RUNS_PER_BLOCKS + 16
    return min(estimate, (R.MAX_DESC - desc_length) // _ATAB_RUN)


def write_in_one_read(
    medium: MediumWriter,
    src: Source,
    plan: Plan,
    header: R.Header,
    desc_json: dict[str, Any],
    pmap_record: bytes,
    *,
    threads: int,
    progress: Progress | None,
) -> OnePass | None:
    """Write the whole archive of a full backup in one read of ``src``; ``header`` is the
    archive's header with ``used_blocks`` still an upper bound (every known and candidate
    block). None when the medium cannot leave room or the used map outgrew it: nothing is
    written then (the medium is rewound) and the caller writes the archive in two reads."""
    bs = header.block_size
    desc_text = R.encode_desc(desc_json)
    runs = room_runs(plan, len(desc_text) - R.RECORD_SIZE)
    if len(plan.known) > runs:
        return None
    empty_atab = R.encode_atab(np.zeros(0, np.int64), np.zeros(0, np.int64))
    fixed = R.HEADER_SIZE + len(desc_text) + len(pmap_record) + len(empty_atab)
    room = fixed + runs * _ATAB_RUN
    if not medium.leave_room(room):
        return None
    candidates = (plan.known.total() + plan.scan.total()) * bs
    report = (lambda done: progress("write", done, candidates)) if progress else None
    framer = Framer(src, plan.known, plan.scan, bs, runs, report)
    hashes = HashBuilder(None, header.volume_size, header.hash_block_size)
    writer = ArchiveWriter(medium, header, b"", threads=threads, hashes=hashes, room=room)
    try:
        writer.write_stream(framer.fill)
    except TooManyRuns:
        medium.rewind()
        return None
    if not framer.exhausted:  # more frames than the bound in the header: a bug, never input
        raise ValueError("one read: blocks left unread after the header's frame count")
    table = AddressTable.from_used(framer.used(), bs)
    if table.dense_size != framer.dense_size:  # the framer and the table disagree: a bug
        raise ValueError(f"one read: {framer.dense_size} B framed, table of {table.dense_size} B")
    atab = R.encode_atab(table.volume_block, table.count)
    pad = room - (fixed - len(empty_atab) + len(atab))
    final = dataclasses.replace(header, used_blocks=table.used_blocks)
    writer.settle_head(final, R.encode_desc(desc_json, pad) + pmap_record + atab)
    return OnePass(final, table, writer.finish())
