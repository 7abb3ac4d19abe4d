"""Restoring a chain reads ahead of its writes in a thread of its own: the target still gets
every byte of the chain's newest state, in pieces larger than the read-ahead window, with
progress counting every used byte once."""

from __future__ import annotations

import os

import numpy as np

from volpack.pipeline.backup import backup
from volpack.pipeline.restore import restore

MiB = 1 << 20


def test_a_chain_restores_equal_to_the_volume_across_many_read_ahead_pieces(tmp_path) -> None:
    rng = np.random.default_rng(9)
    vol = tmp_path / "v.img"
    size = 72 * MiB  # nine 8 MiB pieces: more than the read-ahead window
    with vol.open("wb") as f:
        f.truncate(size)
        for at in range(0, size, 6 * MiB):
            f.seek(at)
            f.write(rng.bytes(4 * MiB))
    catalog = str(tmp_path / "c.sqlite")
    urls = [str(tmp_path / "a0.vpk")]
    backup(str(vol), urls[0], compress="none", catalog=catalog)
    fd = os.open(vol, os.O_RDWR)
    try:
        for k in range(1, 6):
            for at in rng.integers(0, size // 4096 - 64, 12):
                os.pwrite(fd, rng.bytes(int(rng.integers(1, 64)) * 4096), int(at) * 4096)
            hole = int(rng.integers(0, size // MiB - 1)) * MiB
            os.pwrite(fd, bytes(64 * 1024), hole + 4096)  # zeroed, as a trim reads
            urls.append(str(tmp_path / f"a{k}.vpk"))
            backup(str(vol), urls[-1], base=urls[-2], compress="none", catalog=catalog)
    finally:
        os.close(fd)
    seen: list[tuple[int, int]] = []
    out = tmp_path / "r.img"
    restore(urls[-1], str(out), progress=lambda phase, done, total: seen.append((done, total)))
    assert out.read_bytes() == vol.read_bytes()
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:], strict=False))
