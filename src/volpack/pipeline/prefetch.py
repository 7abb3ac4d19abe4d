"""Frames decoded ahead of use, in a small pool, for reads through a chain (restore, merge).

A full restore decodes frames in a pool while it writes; reading a chain went one frame at a
time through each link's cache. ``prefetched`` plans the frames each request needs, decodes them
a bounded window ahead in parallel and hands back each request's bytes as views in order.
It reads and decodes only: no writing, no printing; memory is bounded by the window.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from volpack.format.random_access import zero_views

if TYPE_CHECKING:
    from volpack.format.random_access import Archive
    from volpack.pipeline.chain import ChainView

Span = tuple["Archive | None", int, int, int]  # ChainView.spans: (archive, seq, within, take)
DECODERS = 2  # as a full restore's decode pool (format/reader.py frames())
WINDOW_FRAMES = 8  # decoded frames held ahead of the request handed out (32 MiB of 4 MiB frames)


def prefetched(
    view: ChainView,
    requests: Iterable[Sequence[tuple[int, int]]],
    *,
    decoders: int = DECODERS,
    window: int = WINDOW_FRAMES,
) -> Generator[tuple[Sequence[tuple[int, int]], list[memoryview]], None, None]:
    """Each request (volume ``(offset, length)`` ranges) with its bytes as consecutive views, in
    request order; the frames of later requests are decoded meanwhile in ``decoders`` threads,
    holding at most ``window`` decoded frames plus those of the request being filled and the one
    it ended in. Closing the iterator early cancels what has not started and waits for what has."""
    pool = ThreadPoolExecutor(max(1, decoders), thread_name_prefix="vp-chain-decode")
    held: dict[tuple[int, int], Future[memoryview]] = {}
    uses: dict[tuple[int, int], int] = {}
    # The frame a request ends in, kept until the next request is planned: pieces cut frames, so
    # the next one usually starts in it (dropping it decoded such frames twice).
    carry: tuple[tuple[int, int], Future[memoryview]] | None = None
    queued: deque[tuple[Sequence[tuple[int, int]], list[Span]]] = deque()
    todo = iter(requests)
    more = True
    try:
        while True:
            # Plan and submit requests until the window is full (always one at least).
            while more and (not queued or len(held) < window):
                request = next(todo, None)
                if request is None:
                    more = False
                    break
                spans = [sp for off, n in request for sp in view.spans(off, n)]
                for arch, seq, _, _ in spans:
                    if arch is None:
                        continue
                    key = (id(arch), seq)
                    if key not in held:
                        kept = carry is not None and carry[0] == key
                        held[key] = carry[1] if kept and carry else pool.submit(arch.frame, seq)
                        uses[key] = 0
                    uses[key] += 1
                carry = None
                queued.append((request, spans))
            if not queued:
                return
            request, spans = queued.popleft()
            views: list[memoryview] = []
            for arch, seq, within, take in spans:
                if arch is None:
                    zero_views(views, take)
                    continue
                key = (id(arch), seq)
                views.append(held[key].result()[within : within + take])
                uses[key] -= 1
                if not uses[key]:
                    carry = (key, held.pop(key))
                    del uses[key]
            yield request, views
    finally:
        for fut in held.values():
            fut.cancel()
        pool.shutdown(wait=True)
