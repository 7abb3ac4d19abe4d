"""What storage a path occupies, and whether two paths overlap: the "same file" check by identity.

Names lie (hard links, bind mounts, symlinks, loop devices, a partition and its disk), so a path
is resolved to the bytes it really reaches: (st_dev, st_ino) of a file, or a byte range of the
file or disk under a loop device or partition (sysfs). Reads metadata only (stat, sysfs); never
opens the paths it is given, writes or prints anything.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from volpack.errors import VolpackError

SYSFS = "/sys"
_SECTOR = 512
_MAX_DEPTH = 8  # partition → loop → partition → … chains deeper than this are not followed


@dataclass(frozen=True, slots=True)
class Storage:
    """Bytes ``[start, end)`` of one underlying object (``end`` None: to its end).

    ``key`` names the object: ("inode", st_dev, st_ino), ("block", rdev), ("char", rdev),
    ("new", parent st_dev, parent st_ino, name) for a path not created yet, or ("name", path)
    when nothing better is known. ``name`` says what it is, for messages.
    """

    key: tuple[str | int, ...]
    name: str
    start: int = 0
    end: int | None = None


@dataclass(frozen=True, slots=True)
class Role:
    """A path a verb uses, what it is there ("the source being backed up"), and what to choose
    anew when it clashes with an earlier role ("archive path")."""

    path: str
    what: str
    choose: str


def storage_of(path: str) -> Storage:
    """The storage ``path`` reaches now; a path that does not exist yet is known by its
    (resolved) parent directory and name, so two new paths for the same file still meet."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return _new(path)
    except OSError:
        return Storage(("name", os.path.realpath(path)), path)
    if stat.S_ISBLK(st.st_mode):
        return _block(st.st_rdev, 0, None, path, 0)
    if stat.S_ISCHR(st.st_mode):
        return Storage(("char", st.st_rdev), path)
    return Storage(("inode", st.st_dev, st.st_ino), os.path.realpath(path))


def overlaps(a: Storage, b: Storage) -> bool:
    """Whether ``a`` and ``b`` share at least one byte of the same object."""
    if a.key != b.key:
        return False
    end = _min_end(a.end, b.end)
    return end is None or max(a.start, b.start) < end


def _min_end(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def check_distinct(roles: Sequence[Role], error: type[VolpackError]) -> None:
    """Raise ``error`` when two roles occupy overlapping storage, naming both roles."""
    seen: list[tuple[Role, Storage]] = []
    for role in roles:
        here = storage_of(role.path)
        for earlier, there in seen:
            if overlaps(there, here):
                raise error(_clash(earlier, there, role, here))
        seen.append((role, here))


def _clash(earlier: Role, there: Storage, role: Role, here: Storage) -> str:
    remedy = f"choose another {role.choose}"
    if role.path == earlier.path:
        return f"{role.path}: is {earlier.what}; {remedy}"
    if (there.start, there.end) == (here.start, here.end) == (0, None):
        kind, detail = _object(here)
        return (
            f"{role.path}: is the same {kind} as {earlier.path} ({detail}), {earlier.what}; "
            f"{remedy}"
        )
    lo, hi = max(there.start, here.start), _min_end(there.end, here.end)
    return (
        f"{role.path}: overlaps {earlier.path}, {earlier.what}, in bytes [{lo}, {hi or 'end'}) of "
        f"{here.name}; {remedy}"
    )


def _object(s: Storage) -> tuple[str, str]:
    """What kind of object ``s`` is, and which one (for messages)."""
    kind, *ids = s.key
    if kind == "inode":
        dev, ino = (int(x) for x in ids)
        return "file", f"inode {ino} on device {os.major(dev)}:{os.minor(dev)}"
    if kind in ("block", "char"):
        rdev = int(ids[0])
        return f"{kind} device", f"{os.major(rdev)}:{os.minor(rdev)}"
    return "path", s.name


def _new(path: str) -> Storage:
    real = os.path.realpath(path)  # a dangling symlink leads to where the file would appear
    parent, name = os.path.split(real)
    try:
        st = os.stat(parent)
    except OSError:
        return Storage(("name", real), real)
    return Storage(("new", st.st_dev, st.st_ino, name), real)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    return int(text) if text is not None and text.isdigit() else None


def _block(rdev: int, start: int, end: int | None, name: str, depth: int) -> Storage:
    """Follow a block device down to the disk or file that holds its bytes (sysfs)."""
    whole = Storage(("block", rdev), name, start, end)
    if depth >= _MAX_DEPTH:
        return whole
    node = os.path.realpath(f"{SYSFS}/dev/block/{os.major(rdev)}:{os.minor(rdev)}")
    if not os.path.isdir(node):
        return whole
    if os.path.exists(os.path.join(node, "partition")):
        pstart = _read_int(os.path.join(node, "start"))
        psize = _read_int(os.path.join(node, "size"))
        major, _, minor = (_read(os.path.join(os.path.dirname(node), "dev")) or "").partition(":")
        if pstart is None or psize is None or not (major.isdigit() and minor.isdigit()):
            return whole
        base, size = pstart * _SECTOR, psize * _SECTOR
        limit = base + size if end is None else base + min(end, size)
        disk_name = "/dev/" + os.path.basename(os.path.dirname(node))
        return _block(os.makedev(int(major), int(minor)), base + start, limit, disk_name, depth + 1)
    backing = _read(os.path.join(node, "loop", "backing_file"))
    if backing is None:
        return whole
    offset = _read_int(os.path.join(node, "loop", "offset")) or 0
    sizelimit = _read_int(os.path.join(node, "loop", "sizelimit")) or 0
    if sizelimit:
        end = sizelimit if end is None else min(end, sizelimit)
    lo, hi = offset + start, None if end is None else offset + end
    try:
        st = os.stat(backing)  # "(deleted)" appended when the file is gone: no alias by name
    except OSError:
        return whole
    if stat.S_ISBLK(st.st_mode):
        return _block(st.st_rdev, lo, hi, backing, depth + 1)
    return Storage(("inode", st.st_dev, st.st_ino), backing, lo, hi)


__all__ = ["Role", "Storage", "check_distinct", "overlaps", "storage_of"]
