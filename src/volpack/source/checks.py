"""Is a path something whose size can be trusted as a volume? Asked before any reader opens it.

Only regular files and block devices are volumes (an allow-list of file types); a regular file on
a kernel pseudo filesystem (procfs, sysfs, …) reports a size that is not its content, so it is
refused too. Only stats the path: opening a FIFO would block until some writer came along.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat

from volpack.errors import SourceError

INSTEAD = "volpack backs up volumes: image files, block devices, qcow2 images or lvm:VG/LV"

# statfs f_type of kernel pseudo filesystems (linux/magic.h): files there are generated on read,
# their st_size is 0 or a page, never their content. Real filesystems are not listed: any other
# filesystem holds real files (an unknown one must not be refused).
PSEUDO_FILESYSTEMS = {
    0x9FA0: "proc",
    0x62656572: "sysfs",
    0x64626720: "debugfs",
    0x74726163: "tracefs",
    0x73636673: "securityfs",
    0x27E0EB: "cgroup",
    0x63677270: "cgroup2",
    0xCAFE4A11: "bpf",
    0x6165676C: "pstore",
    0x62656570: "configfs",
    0xDE5E81E4: "efivarfs",
    0x65735543: "fusectl",
    0xF97CFF8C: "selinuxfs",
    0x43415D53: "smackfs",
    0x42494E4D: "binfmt_misc",
    0x1CD1: "devpts",
    0x19800202: "mqueue",
    0x6E736673: "nsfs",
    0x50495045: "pipefs",
    0x534F434B: "sockfs",
    0x67596969: "rpc_pipefs",
    0x6E667364: "nfsd",
    0x0187: "autofs",
}

_libc = ctypes.CDLL(None, use_errno=True)
# struct statfs starts with f_type: a long everywhere except s390x, where it is an unsigned int.
_FTYPE = ctypes.c_uint32 if platform.machine() == "s390x" else ctypes.c_long


def filesystem_type(path: str) -> int | None:
    """statfs(2) f_type of the filesystem holding ``path``; None when it cannot be asked."""
    buf = ctypes.create_string_buffer(512)  # larger than struct statfs on every architecture
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return None
    return _FTYPE.from_buffer(buf).value & 0xFFFFFFFF


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode):
        return "a character device (a stream without a size)"
    if stat.S_ISFIFO(mode):
        return "a FIFO (a named pipe: a stream without a size)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file or block device"


def check_volume_path(path: str) -> None:
    """Raise SourceError unless ``path`` is a regular file off pseudo filesystems or a block
    device. A path that cannot be stat'ed is left to the reader, which names the problem."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISBLK(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        raise SourceError(f"{path}: is {_kind(st.st_mode)}; {INSTEAD}")
    pseudo = PSEUDO_FILESYSTEMS.get(filesystem_type(path) or 0)
    if pseudo is not None:
        raise SourceError(
            f"{path}: is a file on the {pseudo} pseudo filesystem (its size of {st.st_size} bytes "
            f"is not its content); {INSTEAD}"
        )
