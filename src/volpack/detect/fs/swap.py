"""Linux swap: only the header page is used; swapped-out pages are never worth keeping.

Recognises the SWAPSPACE2 signature at the end of the first page (4, 8, 16 or 64 KiB pages).
The area past ``last_page`` is left to the conservative detectors. Reads only.
"""

from __future__ import annotations

import struct

from volpack.detect.fs._common import Area, FsResult, text, uuid_str
from volpack.extents import Extents

_PAGE_SIZES = (4096, 8192, 16384, 65536)
_SIGNATURES = (b"SWAPSPACE2", b"SWAP-SPACE")


def _page_size(area: Area) -> int | None:
    for page in _PAGE_SIZES:
        if area.length >= page and area.read(page - 10, 10) in _SIGNATURES:
            return page
    return None


def probe(area: Area) -> bool:
    return _page_size(area) is not None


def analyse(area: Area) -> FsResult:
    page = _page_size(area)
    if page is None:
        raise area.damaged("swap signature not found")
    head = area.read(0, page)
    if head[page - 10 :] == b"SWAP-SPACE":
        raise area.damaged("swap area in the old v0 format")
    version, last_page = struct.unpack_from("<II", head, 1024)
    if version != 1 or last_page == 0:
        raise area.damaged(f"swap header version {version}, last page {last_page}")
    size = min((last_page + 1) * page, area.length)
    details = {
        "uuid": uuid_str(head[1036:1052]),
        "label": text(head[1052:1068]),
        "block_size": page,
        "size": size,
    }
    return FsResult("swap", size, Extents.span(area.start, area.start + page), details)
