"""``cleanup``: find what interrupted runs left on a medium and remove it.

Directories: hidden partial files (``volpack.partials``), removed only when their lock proves the
writer dead. S3: open multipart uploads under a prefix, aborted only when older than an age (S3
cannot tell whether their writer lives). Archives are never touched; a listing failure raises.
Library code: returns what it found and did, prints nothing.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from volpack import media, partials
from volpack.errors import MediumError, MediumNotFound, UsageError
from volpack.media.file import path_of
from volpack.units import human_duration

DEFAULT_UPLOAD_AGE = 24 * 3600.0  # S3: younger uploads may belong to a backup still running

# What happened to a leftover.
REMOVED = "removed"
WOULD_REMOVE = "would remove"
KEPT = "kept"
FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Leftover:
    """One leftover: a partial file (``url`` is its path) or an S3 multipart upload."""

    kind: str  # "partial" or "upload"
    url: str
    size: int | None  # bytes; None for uploads (S3 lists them without sizes)
    age: float  # seconds since a partial was last written / an upload was started
    action: str  # REMOVED, WOULD_REMOVE, KEPT or FAILED
    reason: str
    upload_id: str | None = None


@dataclass(frozen=True, slots=True)
class CleanupResult:
    url: str
    dry_run: bool
    older_than: float | None
    leftovers: tuple[Leftover, ...]

    def count(self, action: str) -> int:
        return sum(1 for item in self.leftovers if item.action == action)


def cleanup(url: str, *, older_than: float | None = None, dry_run: bool = False) -> CleanupResult:
    """Remove the leftovers at ``url``: a directory (all partials in it), a file path (the
    partials of that name) or ``s3://bucket/prefix`` (uploads older than ``older_than`` seconds,
    default 24 h). For files ``older_than`` is an extra filter (default none: the lock decides).
    With ``dry_run`` nothing is changed. Raises when the place cannot be listed."""
    if older_than is not None and older_than < 0:
        raise UsageError(f"--older-than {older_than} s: must be 0 or more; give an age like 24h")
    leftovers = media.capabilities(url).leftovers
    if leftovers == "uploads":
        age = DEFAULT_UPLOAD_AGE if older_than is None else older_than
        found = _uploads(url, age, dry_run)
        return CleanupResult(url, dry_run, age, found)
    if leftovers != "partials":
        raise UsageError(
            f"{url}: cleanup handles directories, file paths and s3://bucket/prefix, not "
            f"'{media.scheme_of(url)}' media"
        )
    return CleanupResult(url, dry_run, older_than, _partials(url, older_than, dry_run))


def _partials(url: str, older_than: float | None, dry_run: bool) -> tuple[Leftover, ...]:
    path = os.path.abspath(path_of(url))
    if os.path.isdir(path):
        directory, name = path, None
    else:
        directory, name = os.path.split(path)
        if not os.path.isdir(directory):
            raise MediumNotFound(f"{url}: directory {directory} does not exist; check the path")
    try:
        if name is not None and partials.final_name(name) is not None:
            found = [partials.probe(path)] if os.path.lexists(path) else []
        else:
            found = partials.find(directory, name)
    except OSError as exc:
        raise MediumError(
            f"{directory}: cannot list it for leftovers ({exc.strerror}); nothing was removed"
        ) from None
    now = time.time()
    out = []
    for p in found:
        age = max(0.0, now - p.mtime)
        if p.state != partials.DEAD:
            out.append(Leftover("partial", p.path, p.size, age, KEPT, p.reason))
        elif older_than is not None and age < older_than:
            why = f"written {human_duration(age)} ago, younger than {human_duration(older_than)}"
            out.append(Leftover("partial", p.path, p.size, age, KEPT, why))
        elif dry_run:
            out.append(Leftover("partial", p.path, p.size, age, WOULD_REMOVE, p.reason))
        else:
            out.append(_remove_partial(p, age))
    return tuple(out)


def _remove_partial(p: partials.Partial, age: float) -> Leftover:
    try:
        done = partials.remove_if_dead(p.path)
    except OSError as exc:
        return Leftover("partial", p.path, p.size, age, FAILED, exc.strerror or str(exc))
    if done.state != partials.DEAD:  # a writer took it up in the meantime, or it is gone
        return Leftover("partial", p.path, p.size, age, KEPT, done.reason)
    return Leftover("partial", p.path, done.size, age, REMOVED, p.reason)


def _uploads(url: str, older_than: float, dry_run: bool) -> tuple[Leftover, ...]:
    from volpack.media.s3.uploads import abort_upload, list_uploads

    now = time.time()
    out = []
    for u in list_uploads(url):
        age = max(0.0, now - u.initiated)
        if age < older_than:
            why = f"started {human_duration(age)} ago, younger than {human_duration(older_than)}"
            out.append(Leftover("upload", u.url, None, age, KEPT, why, u.upload_id))
            continue
        why = f"started {human_duration(age)} ago"
        if dry_run:
            out.append(Leftover("upload", u.url, None, age, WOULD_REMOVE, why, u.upload_id))
            continue
        try:
            aborted = abort_upload(u)
        except MediumError as exc:
            out.append(Leftover("upload", u.url, None, age, FAILED, str(exc), u.upload_id))
            continue
        action, why = (REMOVED, why) if aborted else (KEPT, "gone before it could be aborted")
        out.append(Leftover("upload", u.url, None, age, action, why, u.upload_id))
    return tuple(out)
