"""FAT cross-check: every cluster the directory tree or a chain references must be allocated.

Walks the directory tree from the root (following directory chains cluster by cluster, each
directory once) and checks in numpy that every entry's first cluster and every cluster a chain
links to has a non-zero FAT entry. Raises FsDamaged on the first that does not. Reads only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volpack.detect.fs._common import Area

_ATTR_LFN = 0x0F
_ATTR_VOLUME = 0x08
_ATTR_DIR = 0x10
# Bound on the directory clusters read (and so on the loop): 2^22 clusters of directories.
_MAX_DIR_CLUSTERS = 1 << 22


@dataclass(frozen=True, slots=True)
class FatLayout:
    kind: str
    cluster_bytes: int
    data_start: int  # bytes from the filesystem's start
    root_offset: int  # FAT12/16: fixed root directory, bytes from the start
    root_bytes: int  # FAT12/16: its size; 0 on FAT32
    root_cluster: int  # FAT32: first cluster of the root directory
    first_reserved: int  # entries at or above this end a chain (or mark bad clusters)


def check_chains(area: Area, table: np.ndarray) -> None:
    """A chain never links a cluster to a free one."""
    entries = table.size
    nxt = table[2:]
    links = np.flatnonzero((nxt >= 2) & (nxt < entries))
    bad = links[table[nxt[links]] == 0]
    if bad.size:
        c = int(bad[0]) + 2
        raise area.damaged(
            f"FAT cluster {int(nxt[bad[0]])} follows cluster {c} in a chain but its FAT entry "
            "marks it free; the table is damaged"
        )


def check_directory_tree(area: Area, lay: FatLayout, table: np.ndarray) -> int:
    """Walk every directory from the root; every live entry's first cluster must be allocated.
    Returns the number of entries checked."""
    entries = table.size
    checked = 0
    budget = _MAX_DIR_CLUSTERS
    seen: set[int] = set()
    # (path, first cluster or 0 for the fixed root)
    queue: list[tuple[str, int]] = [("/", 0 if lay.root_bytes else lay.root_cluster)]
    while queue:
        path, first = queue.pop()
        if first == 0:
            raw = area.read_array(lay.root_offset, lay.root_bytes)
        else:
            if first in seen:
                continue  # a directory linked twice: not ours to judge, only walk it once
            seen.add(first)
            chain = _chain(area, lay, table, first, path, budget)
            budget -= len(chain)
            raw = _read_clusters(area, lay, chain)
        ents = raw[: raw.size // 32 * 32].reshape(-1, 32)
        end = np.flatnonzero(ents[:, 0] == 0)
        if end.size:
            ents = ents[: end[0]]
        attr = ents[:, 11]
        live = (ents[:, 0] != 0xE5) & (ents[:, 0] != 0x2E) & (attr != _ATTR_LFN)
        live &= (attr & _ATTR_VOLUME) == 0
        ents, attr = ents[live], attr[live]
        start = ents[:, 26].astype(np.int64) | (ents[:, 27].astype(np.int64) << 8)
        if lay.kind == "fat32":
            start |= (ents[:, 20].astype(np.int64) << 16) | (ents[:, 21].astype(np.int64) << 24)
        has = start != 0
        checked += int(has.sum())
        outside = np.flatnonzero(has & ((start < 2) | (start >= entries)))
        if outside.size:
            i = int(outside[0])
            raise area.damaged(
                f"FAT directory entry {path}{_name(ents[i])} starts at cluster {int(start[i])}, "
                f"outside 2..{entries - 1}; the directory is damaged"
            )
        free = np.flatnonzero(has & (table[np.where(has, start, 0)] == 0))
        if free.size:
            i = int(free[0])
            raise area.damaged(
                f"FAT cluster {int(start[i])} is the first cluster of {path}{_name(ents[i])} but "
                "its FAT entry marks it free; the table is damaged"
            )
        for i in np.flatnonzero(has & ((attr & _ATTR_DIR) != 0)).tolist():
            queue.append((f"{path}{_name(ents[i])}/", int(start[i])))
    return checked


def _chain(
    area: Area, lay: FatLayout, table: np.ndarray, first: int, path: str, budget: int
) -> list[int]:
    """The clusters of a directory's chain (checked: in range, allocated, no loop)."""
    out: list[int] = []
    on_chain: set[int] = set()
    c = first
    while True:
        if len(out) >= budget or c in on_chain:
            raise area.damaged(
                f"FAT directory {path} chain longer than {budget} clusters; it loops or the "
                "table is damaged"
            )
        out.append(c)
        on_chain.add(c)
        nxt = int(table[c])
        if nxt >= lay.first_reserved:
            return out
        if nxt < 2 or nxt >= table.size:
            raise area.damaged(
                f"FAT directory {path} chain reaches cluster {c}, whose entry is {nxt:#x}; "
                "the table is damaged"
            )
        c = nxt


def _read_clusters(area: Area, lay: FatLayout, chain: list[int]) -> np.ndarray:
    cl = np.array(chain, np.int64)
    breaks = np.flatnonzero(np.diff(cl) != 1) + 1
    parts = []
    for run in np.split(cl, breaks):
        at = lay.data_start + (int(run[0]) - 2) * lay.cluster_bytes
        parts.append(area.read_array(at, run.size * lay.cluster_bytes))
    return np.concatenate(parts)


def _name(ent: np.ndarray) -> str:
    raw = bytes(ent[:11])
    base = raw[:8].decode("latin-1").rstrip()
    ext = raw[8:].decode("latin-1").rstrip()
    return f"{base}.{ext}" if ext else base
