"""Memory of an incremental chain's bookkeeping on a 16 TiB sparse volume with 1 TiB used: the
block hash tables (a million entries), hash compare, applying a link to its base's table and a
chain view's ownership of every block. Tables only, never data: hashes are random bytes where a
backup would hash the source. Measured in a fresh interpreter, so the peak is this work's own
(its VmHWM: ru_maxrss of a child keeps the size of the process that started it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

RSS_LIMIT_MIB = 200

_PROBE = r"""
import json, time
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
    "peak_mib": int(
        next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
    ) / 1024,
    "seconds": time.perf_counter() - started,
    "entries": len(state.entries),
    "covered_runs": [len(c) for c in covers[1:]],
}))
"""


def test_chain_bookkeeping_of_16_tib_with_1_tib_used_stays_under_200_mib() -> None:
    # numpy asks the kernel for huge pages on large arrays; whether it gets them depends on what
    # ran before, and a 2 MiB page counts whole: the probe measures what the tables need, as the
    # CLI runs (it turns the hint off too, volpack.cli.main).
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"}
    res = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env)
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


def test_the_archives_of_a_chain_share_one_frame_cache_budget(tmp_path) -> None:
    """Restore, merge, verify and serve read a chain through every link; each link keeping the
    whole budget held 10x the frames (about 700 MiB restoring a 10-link chain of the bench)."""
    import numpy as np

    from volpack.format.random_access import DEFAULT_CACHE, open_archive
    from volpack.pipeline.backup import backup
    from volpack.pipeline.chain import ChainView, Places, resolve_chain

    rng = np.random.default_rng(3)
    vol = tmp_path / "v.img"
    vol.write_bytes(rng.bytes(8 << 20))
    urls = [str(tmp_path / "a0.vpk")]
    backup(str(vol), urls[0], compress="none", catalog=str(tmp_path / "c.sqlite"))
    for k in range(1, 5):
        with vol.open("r+b") as f:
            f.seek(k << 20)
            f.write(rng.bytes(4096))
        urls.append(str(tmp_path / f"a{k}.vpk"))
        backup(
            str(vol), urls[-1], base=urls[-2], compress="none", catalog=str(tmp_path / "c.sqlite")
        )
    with ChainView(resolve_chain(open_archive(urls[-1]), Places())) as view:
        assert len(view.chain) == 5
        assert sum(a.cache_bytes for a in view.chain) <= DEFAULT_CACHE
        assert view.read(0, 8 << 20) == vol.read_bytes()


RESTORE_RSS_LIMIT_MIB = 200


# The peak is read from the process's own VmHWM at exit: ru_maxrss of a child started from this
# test process keeps the parent's size at fork (pytest alone can be past 200 MiB in a full run).
_PEAK_AT_EXIT = r"""
import atexit, sys
from volpack.cli import main


def peak():
    with open("/proc/self/status") as f:
        kib = next(line for line in f if line.startswith("VmHWM:")).split()[1]
    print(f"peak_kib={kib}", file=sys.stderr)


atexit.register(peak)
sys.exit(main(sys.argv[1:]))
"""


def _peak_rss_mib(argv: list[str]) -> float:
    res = subprocess.run(
        [sys.executable, "-c", _PEAK_AT_EXIT, *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert res.returncode == 0, (argv, res.stderr[-2000:])
    return int(res.stderr.rsplit("peak_kib=", 1)[1].split()[0]) / 1024


def test_restoring_and_merging_a_10_link_chain_decodes_ahead_within_bounded_memory(
    tmp_path,
) -> None:
    """Frames are decoded ahead of use in a pool; its window (8 frames and the piece in hand)
    and the chain's one cache budget bound the memory however large the volume: 192 MiB of
    incompressible data in 4 MiB frames, ten links each rewriting pieces all over it."""
    import filecmp
    import os

    import numpy as np

    from volpack.pipeline.backup import backup

    rng = np.random.default_rng(8)
    vol = tmp_path / "v.img"
    size = 192 << 20
    with vol.open("wb") as f:
        for _ in range(size >> 24):
            f.write(rng.bytes(16 << 20))
    del f
    kw = {"compress": "none", "catalog": str(tmp_path / "c.sqlite")}
    urls = [str(tmp_path / "a0.vpk")]
    backup(str(vol), urls[0], **kw)
    fd = os.open(vol, os.O_RDWR)
    try:
        for k in range(1, 10):
            for at in rng.integers(0, size // 4096 - 64, 60):
                os.pwrite(fd, rng.bytes(int(rng.integers(1, 64)) * 4096), int(at) * 4096)
            urls.append(str(tmp_path / f"a{k}.vpk"))
            backup(str(vol), urls[-1], base=urls[-2], **kw)
    finally:
        os.close(fd)
    out = tmp_path / "r.img"
    restore_mib = _peak_rss_mib(["restore", urls[-1], str(out), "-q"])
    # Compared in chunks: a parent holding the volume would count in the child's peak (fork).
    assert filecmp.cmp(out, vol, shallow=False)
    merged = str(tmp_path / "m.vpk")
    merge_mib = _peak_rss_mib(
        ["merge", urls[-1], merged, "--compress", "none", "--no-catalog", "-q"]
    )
    print(
        f"10-link chain of {size >> 20} MiB: restore peak RSS {restore_mib:.0f} MiB, merge "
        f"{merge_mib:.0f} MiB, of {RESTORE_RSS_LIMIT_MIB} MiB"
    )
    assert restore_mib <= RESTORE_RSS_LIMIT_MIB
    assert merge_mib <= RESTORE_RSS_LIMIT_MIB
