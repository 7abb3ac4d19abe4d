"""I/O buffers placed where the kernel copies into them at full speed.

A page-cache read or a socket receive is one ``rep movsb`` into the caller's buffer. On the AMD
EPYC machines volpack is benchmarked on it runs 3-5x slower when the destination's address minus
the source's, modulo 64, is 1 … 31 bytes (bench/README.md, "Buffers the kernel copies into at
full speed"); writes are not affected. A large ``bytearray`` starts 16 bytes past a page boundary
(the allocator's chunk header), which is that case for every read at a block-aligned offset. So
readers place their bytes at the source offset's phase (its value modulo 64): a source read at a
block-aligned offset lands on a cache line, a frame inside an archive at its own phase.
"""

from __future__ import annotations

import ctypes

LINE = 64


def place(raw: bytearray, size: int, phase: int = 0) -> memoryview:
    """``size`` bytes of ``raw`` (at least ``size + 63`` long) whose first byte's address is
    ``phase`` modulo 64. The view's ``obj`` is ``raw``, so pools that count references to
    their bytearrays see it."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(raw))
    lead = (phase - address) % LINE
    return memoryview(raw)[lead : lead + size]


def buffer(size: int, phase: int = 0) -> memoryview:
    """A zero-filled, writable buffer of ``size`` bytes placed at ``phase`` (see :func:`place`)."""
    return place(bytearray(size + LINE), size, phase)
