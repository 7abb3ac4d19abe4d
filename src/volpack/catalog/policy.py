"""Retention policy: which archives of one volume to keep (keep-last/daily/weekly/monthly).

A pure function over (id, time) pairs; it never touches the catalog or a medium, so it can be
computed and shown in full before anything is deleted. Semantics follow restic's ``forget``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from volpack.errors import UsageError

# Each rule maps a time to the bucket it falls in; per rule, the newest archive of each of the
# newest N distinct buckets is kept.
_RULES: tuple[tuple[str, Callable[[dt.datetime], tuple[int, ...]]], ...] = (
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How many of each to keep; 0 means the rule is off. At least one rule must be on."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0

    def check(self) -> None:
        for name in ("last", "daily", "weekly", "monthly"):
            value = getattr(self, name)
            if value < 0:
                raise UsageError(f"--keep-{name} {value}: must be 0 or more")
        if not self.any():
            raise UsageError(
                "prune: no retention rule given, nothing would be kept; "
                "use at least one of --keep-last/--keep-daily/--keep-weekly/--keep-monthly"
            )

    def any(self) -> bool:
        return bool(self.last or self.daily or self.weekly or self.monthly)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One archive as the policy sees it: an id and its creation time (seconds since the epoch)."""

    id: str
    created: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict for one volume: ``keep`` newest first with the reasons, ``remove``."""

    keep: tuple[Snapshot, ...]
    reasons: dict[str, tuple[str, ...]]
    remove: tuple[Snapshot, ...]


def apply(policy: Policy, snapshots: Sequence[Snapshot], tz: dt.tzinfo | None = None) -> Decision:
    """Split the archives of one volume into those to keep and those to remove.

    Archives are taken newest first (ties broken by id, so the result is deterministic). A rule
    ``keep-last N`` keeps the N newest; ``keep-daily N`` keeps, for each of the N newest calendar
    days that have archives, the newest archive of that day (weekly: ISO weeks, monthly: calendar
    months), in the time zone ``tz`` (local time when None). An archive kept by any rule is kept.
    """
    policy.check()
    ordered = sorted(snapshots, key=lambda s: (s.created, s.id), reverse=True)
    counts = {"last": policy.last, "daily": policy.daily, "weekly": policy.weekly}
    counts["monthly"] = policy.monthly
    last_bucket: dict[str, tuple[int, ...] | None] = {name: None for name, _ in _RULES}
    keep: list[Snapshot] = []
    reasons: dict[str, tuple[str, ...]] = {}
    remove: list[Snapshot] = []
    for snap in ordered:
        why: list[str] = []
        if counts["last"] > 0:
            counts["last"] -= 1
            why.append("last")
        when = dt.datetime.fromtimestamp(snap.created, tz=tz or dt.UTC)
        if tz is None:
            when = when.astimezone()  # local time, like the user's idea of "a day"
        for name, bucket_of in _RULES:
            if counts[name] <= 0:
                continue
            bucket = bucket_of(when)
            if bucket != last_bucket[name]:
                last_bucket[name] = bucket
                counts[name] -= 1
                why.append(name)
        if why:
            keep.append(snap)
            reasons[snap.id] = tuple(why)
        else:
            remove.append(snap)
    return Decision(tuple(keep), reasons, tuple(remove))
