"""The NBD server's budget for reply memory, shared by all connections.

A connection reserves bytes before it reads a piece of a reply (the frames it may decode and pin)
and gives them back once the piece is in the kernel's socket buffer, or keeps only what it had to
copy for a client that does not read. Waiters are served first come, first served. Counts only:
never touches sockets, archives or threads of its own.
"""

from __future__ import annotations

import threading
from types import TracebackType


class ReplyBudget:
    """``total`` bytes of reply memory; ``reserve(n)`` waits until ``n`` are free, in FIFO order.

    A reservation larger than the whole budget is cut to the budget, so it waits until every other
    reservation is back and then runs alone: nothing can wait forever on its own size.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"reply budget of {total} bytes; it must be positive")
        self.total = total
        self._cond = threading.Condition()
        self._in_use = 0
        self._peak = 0
        self._next_ticket = 0
        self._serving = 0

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._in_use

    @property
    def peak(self) -> int:
        """The most ever reserved at once (for tests and logs)."""
        with self._cond:
            return self._peak

    def reserve(self, n: int) -> Hold:
        n = max(0, min(n, self.total))
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            # FIFO: a small request never overtakes a big one that waits for room.
            while ticket != self._serving or self._in_use + n > self.total:
                self._cond.wait()
            self._serving += 1
            self._in_use += n
            self._peak = max(self._peak, self._in_use)
            self._cond.notify_all()  # the next ticket may fit too
        return Hold(self, n)

    def _give_back(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self._in_use -= n
            self._cond.notify_all()


class Hold:
    """One reservation: shrink it with ``keep``, end it with ``release`` (or a ``with`` block)."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: ReplyBudget, held: int) -> None:
        self._budget = budget
        self.held = held

    def keep(self, n: int) -> None:
        """Hold only ``n`` bytes from now on (never more than already held)."""
        extra = self.held - max(0, n)
        if extra > 0:
            self.held -= extra
            self._budget._give_back(extra)

    def release(self) -> None:
        self.keep(0)

    def __enter__(self) -> Hold:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
