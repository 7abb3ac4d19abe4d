"""Test volumes: sparse files with data, zeros and holes where a test wants them."""

from __future__ import annotations

import os
import random


def write_sparse(path: str, size: int, pieces: list[tuple[int, bytes]]) -> None:
    """A file of ``size`` bytes: holes everywhere except the given (offset, data) pieces."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data[: max(0, size - offset)])


def random_pieces(
    rng: random.Random, size: int, count: int, max_len: int = 200_000, zero_share: float = 0.2
) -> list[tuple[int, bytes]]:
    """Random data pieces (some all-zero, so holes and zero blocks both occur)."""
    pieces = []
    for _ in range(count):
        if size == 0:
            break
        off = rng.randrange(size)
        n = rng.randrange(1, max_len)
        data = bytes(n) if rng.random() < zero_share else rng.randbytes(n)
        pieces.append((off, data))
    return pieces


def same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def allocated_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512


class CountingSource:
    """A real raw source that counts the bytes read from it (``opened=`` of a backup)."""

    def __init__(self, path: str) -> None:
        from volpack.source.raw import open_raw

        self._src = open_raw(path)
        self.read = 0

    def __getattr__(self, name: str):
        return getattr(self._src, name)

    def read_into(self, offset: int, view: memoryview) -> None:
        self.read += len(view)
        self._src.read_into(offset, view)


def write_scan_volume(path: str) -> int:
    """A volume for the zero scan: data, allocated zeros it must drop, a block whose first word
    is zero, an unaligned run, holes and a short last block. Returns its size."""
    mib = 1 << 20
    size = 24 * mib + 1000
    pieces = [
        (0, os.urandom(3 * mib)),
        (3 * mib, bytes(2 * mib)),  # allocated, all zeros
        (5 * mib, bytes(4096) + os.urandom(4096)),
        (5 * mib + 2 * 4096 + 8, b"\x01"),  # a block with data past its first word
        (9 * mib + 12345, os.urandom(mib)),  # unaligned run
        (size - 1000, os.urandom(1000)),
    ]
    write_sparse(path, size, pieces)
    return size


def scattered_blocks(rng, blocks: int, block_size: int, tail: int, data_share: float) -> bytes:
    """``blocks`` blocks (the last ``tail`` bytes short when under a block) where about
    ``data_share`` of them hold one non-zero byte: at their start, or further in (a block
    whose first word is zero). ``rng`` is a numpy Generator."""
    size = blocks * block_size - (tail if tail < block_size else 0)
    data = bytearray(size)
    for b in range(blocks):
        if rng.random() < data_share:
            at = b * block_size + (int(rng.integers(8, block_size)) if rng.random() < 0.3 else 0)
            if at < size:
                data[at] = 1 + int(rng.integers(255))
    return bytes(data)
