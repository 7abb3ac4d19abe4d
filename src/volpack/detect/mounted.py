"""Is a volume in use by the running system (mounted, active swap, or behind a mounted loop)?

A mounted filesystem changes under the backup, so its allocation maps are not point-in-time.
Looks at /proc/self/mountinfo, /proc/swaps and /sys/block (loop backing files, partitions,
holders). Only reads those files; never unmounts or touches the volume.
"""

from __future__ import annotations

import contextlib
import os
import stat

from volpack.errors import SourceError

_MOUNTINFO = "/proc/self/mountinfo"
_SWAPS = "/proc/swaps"
_SYS_BLOCK = "/sys/block"


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts() -> list[tuple[int, str, str]]:
    """(st_dev of the mount, mount point, mount source) for every mount."""
    out: list[tuple[int, str, str]] = []
    try:
        with open(_MOUNTINFO, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _sep, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 2:
            continue
        major, _c, minor = fields[2].partition(":")
        if not (major.isdigit() and minor.isdigit()):
            continue
        out.append(
            (os.makedev(int(major), int(minor)), _unescape(fields[4]), _unescape(rfields[1]))
        )
    return out


def _swaps() -> list[str]:
    try:
        with open(_SWAPS, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    return [_unescape(line.split()[0]) for line in lines if line.split()]


def _sys_name(rdev: int) -> str | None:
    link = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    try:
        return os.path.basename(os.path.realpath(link))
    except OSError:
        return None


def _related_devices(rdev: int) -> set[int]:
    """The device, its partitions and (recursively) its holders (dm, md) as device numbers."""
    found: set[int] = set()
    todo = [rdev]
    while todo and len(found) < 4096:
        dev = todo.pop()
        if dev in found:
            continue
        found.add(dev)
        base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        try:
            real = os.path.realpath(base)
            names = os.listdir(real)
        except OSError:
            continue
        children = [
            os.path.join(real, n)
            for n in names
            if os.path.exists(os.path.join(real, n, "partition"))
        ]
        with contextlib.suppress(OSError):
            children += [
                os.path.join(real, "holders", h) for h in os.listdir(os.path.join(real, "holders"))
            ]
        for child in children:
            try:
                with open(os.path.join(child, "dev"), encoding="ascii") as f:
                    major, _c, minor = f.read().strip().partition(":")
                todo.append(os.makedev(int(major), int(minor)))
            except (OSError, ValueError):
                continue
    return found


def _loops_backed_by(st: os.stat_result) -> list[int]:
    """Loop devices whose backing file is this file (same device and inode)."""
    out: list[int] = []
    try:
        names = [n for n in os.listdir(_SYS_BLOCK) if n.startswith("loop")]
    except OSError:
        return out
    for name in names:
        try:
            with open(f"{_SYS_BLOCK}/{name}/loop/backing_file", encoding="utf-8") as f:
                backing = f.read().rstrip("\n")
            with open(f"{_SYS_BLOCK}/{name}/dev", encoding="ascii") as f:
                major, _c, minor = f.read().strip().partition(":")
        except (OSError, ValueError):
            continue
        try:
            bst = os.stat(backing)
        except OSError:
            continue
        if (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino):
            out.append(os.makedev(int(major), int(minor)))
    return out


def mount_users(path: str) -> list[str]:
    """How the volume at ``path`` is in use: mount points, swap, loop devices. Empty if idle."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"{path}: cannot stat ({exc.strerror}); check the path") from exc
    devices: set[int] = set()
    via: dict[int, str] = {}
    if stat.S_ISBLK(st.st_mode):
        devices = _related_devices(st.st_rdev)
    elif stat.S_ISREG(st.st_mode):
        for loop in _loops_backed_by(st):
            name = _sys_name(loop) or "loop"
            for dev in _related_devices(loop):
                devices.add(dev)
                via[dev] = f"/dev/{name}"
    else:
        return []
    names = {f"/dev/{n}" for n in (_sys_name(d) for d in devices) if n}
    real = os.path.realpath(path)
    users: list[str] = []
    for dev, point, source in _mounts():
        src_real = os.path.realpath(source) if source.startswith("/") else source
        if dev in devices or src_real in names or src_real == real:
            extra = f" (through {via[dev]})" if dev in via else ""
            users.append(f"mounted on {point}{extra}")
    for swap in _swaps():
        if os.path.realpath(swap) in names or os.path.realpath(swap) == real:
            users.append("active swap")
    return users


def is_mounted(path: str) -> bool:
    """True when the volume (or a partition of it, or a loop device over it) is in use."""
    return bool(mount_users(path))


def check_not_mounted(path: str) -> None:
    """Raise SourceError when the volume is mounted or in use as swap."""
    users = mount_users(path)
    if users:
        raise SourceError(
            f"{path}: volume is in use ({'; '.join(users[:3])}); unmount it or back up a "
            "snapshot, or pass --allow-mounted (the result is then not point-in-time)"
        )
