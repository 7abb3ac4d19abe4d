"""The dense volume read on the fly (direct mode): dense bytes gathered from the source.

One read per address-table run piece; the short last block of a volume is padded with zeros.
Never decides usage: it follows the address table it is given.
"""

from __future__ import annotations

from volpack.compact.table import AddressTable
from volpack.source.base import Source


class DenseReader:
    def __init__(self, source: Source, table: AddressTable) -> None:
        self.source = source
        self.table = table
        self.size = source.size

    def read(self, dense_offset: int, view: memoryview) -> None:
        """Fill ``view`` with dense bytes starting at ``dense_offset``."""
        vs, lens, ds = self.table.dense_to_volume(dense_offset, dense_offset + len(view))
        for v, n, d in zip(vs.tolist(), lens.tolist(), ds.tolist(), strict=True):
            pos = d - dense_offset
            readable = max(0, min(n, self.size - v))
            if readable:
                self.source.read_into(v, view[pos : pos + readable])
            if readable < n:
                view[pos + readable : pos + n] = bytes(n - readable)
