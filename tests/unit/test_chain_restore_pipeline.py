"""Restoring and merging a chain decode the frames of the next pieces ahead of use in a small
pool: the target still gets every byte of the chain's newest state, in pieces larger than the
read-ahead window, with progress counting every used byte once; the decoded frames held ahead
stay within the window."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from volpack.format.random_access import open_archive
from volpack.pipeline.backup import backup
from volpack.pipeline.chain import ChainView, Places, resolve_chain
from volpack.pipeline.merge import merge
from volpack.pipeline.prefetch import prefetched
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


def _small_frame_chain(tmp_path, links: int = 6) -> tuple:
    """A chain with 256 KiB frames whose links own interleaved hash blocks: a piece needs frames
    of several links, and frames run across pieces."""
    rng = np.random.default_rng(21)
    vol = tmp_path / "v.img"
    size = 40 * MiB + 12288  # a volume end inside a hash block
    with vol.open("wb") as f:
        f.truncate(size)
        for at in range(0, size - 3 * MiB, 3 * MiB):
            f.seek(at)
            f.write(rng.bytes(2 * MiB))
    urls = [str(tmp_path / "a0.vpk")]
    kw = {"frame_size": 256 << 10, "catalog": str(tmp_path / "c.sqlite")}
    backup(str(vol), urls[0], **kw)
    fd = os.open(vol, os.O_RDWR)
    try:
        for k in range(1, links):
            for at in rng.integers(0, size // 4096 - 40, 30):
                os.pwrite(fd, rng.bytes(int(rng.integers(1, 40)) * 4096), int(at) * 4096)
            urls.append(str(tmp_path / f"a{k}.vpk"))
            backup(str(vol), urls[-1], base=urls[-2], **kw)
    finally:
        os.close(fd)
    return vol, urls


def test_a_chain_merges_and_restores_byte_exact_with_frames_shared_across_pieces(
    tmp_path,
) -> None:
    vol, urls = _small_frame_chain(tmp_path)
    out = tmp_path / "r.img"
    restore(urls[-1], str(out))
    assert out.read_bytes() == vol.read_bytes()
    merged = str(tmp_path / "m.vpk")
    merge(urls[-1], merged, compress="none", places=Places())
    restore(merged, str(out), force=True)
    assert out.read_bytes() == vol.read_bytes()
    onto = str(tmp_path / "m2.vpk")
    merge(urls[-1], onto, onto=urls[2], places=Places())
    out.unlink()
    restore(onto, str(out))
    assert out.read_bytes() == vol.read_bytes()


def test_prefetched_pieces_equal_the_chain_view_for_any_ranges_and_window(tmp_path) -> None:
    vol, urls = _small_frame_chain(tmp_path)
    data = vol.read_bytes()
    rng = np.random.default_rng(4)
    size = len(data)
    requests = []
    for _ in range(60):
        runs = []
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, size))
            runs.append((at, int(rng.integers(0, min(3 * MiB, size - at) + 1))))
        requests.append(runs)
    for decoders, window in ((1, 1), (2, 8), (3, 2)):
        with ChainView(resolve_chain(open_archive(urls[-1]), Places())) as view:
            got = list(prefetched(view, requests, decoders=decoders, window=window))
        assert [r for r, _ in got] == requests
        for runs, views in got:
            assert b"".join(views) == b"".join(data[a : a + n] for a, n in runs)


def test_prefetch_holds_at_most_its_window_of_frames_ahead_of_a_slow_consumer(tmp_path) -> None:
    vol, urls = _small_frame_chain(tmp_path, links=3)
    loads: list[int] = []
    with ChainView(resolve_chain(open_archive(urls[-1]), Places())) as view:
        for arch in view.chain:  # count the decodes started, through the real frame loader
            real = arch.frame

            def counted(seq: int, real=real) -> memoryview:
                loads.append(seq)
                return real(seq)

            arch.frame = counted  # type: ignore[method-assign]
        pieces = [[(off, 1 * MiB)] for off in range(0, 40 * MiB, MiB)]
        per_piece = max(
            len({(id(a), s) for a, s, _, _ in view.spans(o, n) if a is not None})
            for ((o, n),) in pieces
        )
        ahead = prefetched(view, pieces, decoders=2, window=4)
        next(ahead)
        time.sleep(0.5)  # the pool would run through the whole chain if nothing bounded it
        started = len(loads)
        rest = sum(1 for _ in ahead)
    assert rest == len(pieces) - 1
    assert started <= 4 + 2 * per_piece, (started, per_piece)
    assert len(loads) > started
    assert threading.active_count() < 10


def test_verify_against_a_volume_compares_every_byte_of_a_chain_read_ahead(tmp_path) -> None:
    import pytest

    from volpack.errors import VolumeDiffers
    from volpack.pipeline.verify import verify

    vol, urls = _small_frame_chain(tmp_path, links=4)
    verify(urls[-1], against=str(vol))
    size = vol.stat().st_size
    with vol.open("r+b") as f:  # a byte changed in the last data run, after many pieces
        f.seek(size - 2 * MiB)
        old = f.read(1)
        f.seek(size - 2 * MiB)
        f.write(bytes([old[0] ^ 0xFF]))
    with pytest.raises(VolumeDiffers, match=str(size - 2 * MiB)):
        verify(urls[-1], against=str(vol))
