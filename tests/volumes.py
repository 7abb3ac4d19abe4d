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
