"""restore(backup(v)) == v for random volumes, in every mode that must agree."""

import os
import pathlib
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import volpack
from volpack.errors import SourceError, UsageError
from volpack.format.random_access import open_archive
from volumes import allocated_bytes, random_pieces, same_bytes, write_sparse

SIZES = st.one_of(
    st.sampled_from([0, 1, 511, 4095, 4096, 4097, 65536 + 3]), st.integers(0, 3 << 20)
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=SIZES,
    seed=st.integers(0, 2**32),
    count=st.integers(0, 12),
    block_size=st.sampled_from([512, 4096, 65536]),
    compress=st.sampled_from(["none", "zstd:1"]),
    detect=st.sampled_from(["auto", "holes", "zeros", "all-used"]),
)
def test_restore_of_backup_is_byte_identical(
    tmp_path, size, seed, count, block_size, compress, detect
):
    rng = random.Random(seed)
    d = tmp_path.__class__(tempfile.mkdtemp(dir=tmp_path))
    src, arc, out = str(d / "v.img"), str(d / "v.vpk"), str(d / "out.img")
    pieces = random_pieces(rng, size, count)
    if size and rng.random() < 0.3:  # data touching the very first and last byte
        pieces += [(0, rng.randbytes(min(size, 700))), (max(0, size - 900), rng.randbytes(900))]
    write_sparse(src, size, pieces)
    r = volpack.backup(
        src,
        arc,
        block_size=block_size,
        compress=compress,
        detect=detect,
        frame_size=65536 if block_size <= 65536 else block_size,
        allow_mounted=True,
    )
    assert r.volume_size == size
    volpack.restore(arc, out)
    assert os.path.getsize(out) == size
    assert same_bytes(src, out)
    # Thin: the restore allocates no more than the archive says is used (+ fs rounding).
    assert allocated_bytes(out) <= r.used_blocks * block_size + 64 * 1024


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=SIZES, seed=st.integers(0, 2**32), count=st.integers(0, 10))
def test_staging_mode_and_direct_mode_produce_the_same_tables_and_data(tmp_path, size, seed, count):
    rng = random.Random(seed)
    d = tmp_path.__class__(tempfile.mkdtemp(dir=tmp_path))
    src = str(d / "v.img")
    write_sparse(src, size, random_pieces(rng, size, count))
    a = volpack.backup(src, str(d / "direct.vpk"), frame_size=65536, allow_mounted=True)
    b = volpack.backup(
        src, str(d / "staged.vpk"), frame_size=65536, staging=str(d / "stage"), allow_mounted=True
    )
    assert not os.path.exists(d / "stage"), "a staging file volpack created is removed"
    with open_archive(str(d / "direct.vpk")) as x, open_archive(str(d / "staged.vpk")) as y:
        assert x.table == y.table
        assert x.used == y.used
        assert x.physical_map.runs() == y.physical_map.runs()
        for seq in range(x.header.frame_count):
            assert x.frame(seq) == y.frame(seq)
    assert a.used_blocks == b.used_blocks


def _archived(tmp_path, rng: random.Random, size: int, pieces: int, max_len: int) -> bytes:
    """A random sparse volume backed up to tmp_path/v.vpk in 64 KiB frames; its bytes."""
    src = str(tmp_path / "v.img")
    write_sparse(src, size, random_pieces(rng, size, pieces, max_len=max_len))
    volpack.backup(src, str(tmp_path / "v.vpk"), frame_size=65536, allow_mounted=True)
    return pathlib.Path(src).read_bytes()


def test_random_access_reads_equal_the_volume(tmp_path):
    rng = random.Random(7)
    size = 5 << 20
    data = _archived(tmp_path, rng, size, 30, 300_000)
    with open_archive(str(tmp_path / "v.vpk"), cache_bytes=4 * 65536) as a:
        for _ in range(300):
            off = rng.randrange(size)
            n = rng.randrange(0, min(200_000, size - off) + 1)
            assert a.read(off, n) == data[off : off + n]


def test_random_access_from_many_threads_loads_each_frame_once_and_copies_nothing(tmp_path):
    size = 3 << 20
    data = _archived(tmp_path, random.Random(11), size, 20, 200_000)
    with open_archive(str(tmp_path / "v.vpk")) as a:
        loads: list[int] = []
        read_at = a.medium.read_at

        def slow_read_at(offset, length):
            loads.append(offset)
            time.sleep(0.02)  # long enough for every thread to ask for the same frame
            return read_at(offset, length)

        a.medium.read_at = slow_read_at
        read_into = a._read_into  # file media: frames are read into reused buffers
        assert read_into is not None

        def slow_read_into(offset, buf):
            loads.append(offset)
            time.sleep(0.02)
            return read_into(offset, buf)

        a._read_into = slow_read_into
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda _: a.read_views(0, size), range(8)))
        for views in got:
            assert all(isinstance(v, memoryview) for v in views)
            assert b"".join(views) == data
        assert sorted(loads) == sorted(set(loads)), "a frame was loaded twice"
        assert len(loads) == a.header.frame_count
        with pytest.raises(UsageError, match="outside the volume"):
            a.read(size - 10, 11)


def test_a_source_that_shrinks_mid_backup_fails_cleanly_from_the_reading_threads(tmp_path):
    src = tmp_path / "v.img"
    src.write_bytes(os.urandom(8 << 20))
    arc = tmp_path / "v.vpk"
    cut = []

    def progress(phase, done, total):
        if phase == "write" and not cut:  # frames are being read by the writer's pool now
            os.truncate(src, 1 << 20)
            cut.append(done)

    with pytest.raises(SourceError, match="shrank during the backup"):
        volpack.backup(
            str(src), str(arc), frame_size=65536, compress="none", progress=progress,
            allow_mounted=True, detect="all-used",
        )  # fmt: skip
    assert cut, "the backup never reached the write phase"
    assert not arc.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["v.img"], "a partial archive was left"
