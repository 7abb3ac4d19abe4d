"""Memory of an incremental chain's bookkeeping on a 16 TiB sparse volume with 1 TiB used: the
block hash tables (a million entries), hash compare, applying a link to its base's table and a
chain view's ownership of every block. Tables only, never data: hashes are random bytes where a
backup would hash the source. Measured in a fresh interpreter, so the peak is this work's own."""

from __future__ import annotations

import json
import subprocess
import sys

RSS_LIMIT_MIB = 200

_PROBE = r"""
import json, resource, time
import numpy as np
from volpack.extents import Extents
from volpack.format.hashtable import HashTable
from volpack.pipeline.chain import ownership
from volpack.pipeline.changes import block_indices, compared

MiB, TiB = 1 << 20, 1 << 40
SIZE, HBS, LINKS = 16 * TiB, MiB, 10
rng = np.random.default_rng(12)
started = time.perf_counter()
blocks = SIZE // HBS
# 1 TiB used: one hash block in every 16, each a run of its own (the worst case for run tables).
used_hb = np.arange(0, blocks, 16, dtype=np.int64) + rng.integers(0, 16, blocks // 16)
n = len(used_hb)
assert n == 1 << 20


def random_hashes(k):
    return np.frombuffer(rng.bytes(16 * k), "V16").copy()


state = HashTable.from_arrays(HBS, SIZE, used_hb, np.frombuffer(rng.bytes(16 * n), "V16"))
covers, useds = [None], [Extents.from_arrays(used_hb * HBS, (used_hb + 1) * HBS)]
touched_hb = used_hb
del used_hb
for link in range(1, LINKS):
    # What a backup's hash compare sees: 1 % of the used hash blocks rewritten, 0.1 % trimmed.
    trimmed = rng.choice(len(touched_hb), n // 1000, replace=False)
    touched_hb = np.delete(touched_hb, trimmed)
    touched = Extents.from_arrays(touched_hb, touched_hb + 1)
    new = state.hash_array(block_indices(touched))
    rewritten = rng.choice(len(new), n // 100, replace=False)
    new[rewritten] = random_hashes(len(rewritten))
    covered = compared(state, touched, new, SIZE)
    data = covered.intersect(touched)
    del touched
    data_hb = block_indices(data)
    own = HashTable.from_arrays(HBS, SIZE, data_hb, new[np.searchsorted(touched_hb, data_hb)])
    del new
    state = state.apply(covered, own)
    assert len(state.entries) == len(touched_hb), (len(state.entries), len(touched_hb))
    covers.append(covered)
    useds.append(data.scale_in(HBS))
owned, parts = ownership(covers[::-1], useds[::-1], SIZE, HBS)
assert sum(p.total() for p in parts) == len(touched_hb) * HBS
assert sum(o.total() for o in owned) == SIZE
print(json.dumps({
    "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "seconds": time.perf_counter() - started,
    "entries": len(state.entries),
    "covered_runs": [len(c) for c in covers[1:]],
}))
"""


def test_chain_bookkeeping_of_16_tib_with_1_tib_used_stays_under_200_mib() -> None:
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    peak = got["peak_mib"]
    verdict = "pass" if peak <= RSS_LIMIT_MIB else "FAIL"
    print(
        f"chain bookkeeping, 16 TiB volume, 1 TiB used ({got['entries']} hash table entries), "
        f"10 links: peak RSS {peak:.0f} MiB of {RSS_LIMIT_MIB} MiB "
        f"({RSS_LIMIT_MIB - peak:+.0f} MiB margin) in {got['seconds']:.1f} s: {verdict}"
    )
    assert peak <= RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB > {RSS_LIMIT_MIB} MiB"
