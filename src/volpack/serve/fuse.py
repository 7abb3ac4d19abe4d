"""Read-only FUSE filesystem with one file: the volume of an archive, read through the frame index.

Loop-mount that file (``losetup -r``) to browse the backed-up filesystem. Uses mfusepy (extra
``volpack[fuse]``) over libfuse3; libfuse's own SIGINT/SIGTERM handlers unmount cleanly. Never
writes anything, and raises UsageError (with the fix) when FUSE is not usable here.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from typing import Any

from volpack.errors import UsageError, VolpackError
from volpack.serve.export import Volume

log = logging.getLogger("volpack")

DEFAULT_FILE_NAME = "volume.img"


def _load_mfusepy() -> Any:
    try:
        import mfusepy
    except ImportError:
        raise UsageError(
            "volpack mount needs the mfusepy module; install it with: pip install 'volpack[fuse]'"
        ) from None
    except OSError as exc:  # mfusepy loads libfuse when imported
        raise UsageError(
            f"volpack mount: libfuse is not available ({exc}); install fuse3 (apt install fuse3)"
        ) from None
    return mfusepy


class Session:
    """Whether libfuse started and ended the filesystem (tells a signal stop from a failure)."""

    def __init__(self) -> None:
        self.started = False
        self.ended = False


def make_operations(volume: Volume, file_name: str, mfusepy: Any, session: Session) -> Any:
    """An mfusepy ``Operations`` object exposing ``volume`` as ``/<file_name>``."""
    size = int(volume.size)
    used = int(volume.used_bytes().clip(0, size).total())
    now = time.time_ns()
    file_path = "/" + file_name

    class VolumeFS(mfusepy.Operations):
        use_ns = True

        def init(self, path: str) -> None:
            session.started = True

        def destroy(self, path: str) -> None:
            session.ended = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            base = {"st_uid": os.getuid(), "st_gid": os.getgid()}
            base.update(st_atime=now, st_mtime=now, st_ctime=now)
            if path == "/":
                return base | {"st_mode": stat.S_IFDIR | 0o555, "st_nlink": 2}
            if path == file_path:
                # st_blocks from the used map, so `du` shows what the archive really holds.
                blocks = -(-used // 512)
                return base | {
                    "st_mode": stat.S_IFREG | 0o444,
                    "st_nlink": 1,
                    "st_size": size,
                    "st_blocks": blocks,
                    "st_blksize": 65536,
                }
            raise mfusepy.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: int) -> list[str]:
            if path != "/":
                raise mfusepy.FuseOSError(errno.ENOTDIR)
            return [".", "..", file_name]

        def open(self, path: str, flags: int) -> int:
            if path != file_path:
                raise mfusepy.FuseOSError(errno.ENOENT)
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise mfusepy.FuseOSError(errno.EROFS)
            return 0

        def read(self, path: str, length: int, offset: int, fh: int) -> bytes:
            if offset >= size or length <= 0:
                return b""
            length = min(length, size - offset)
            try:
                return volume.read(offset, length)
            except VolpackError as exc:
                log.warning("read of %d bytes at %d failed: %s", length, offset, exc)
                raise mfusepy.FuseOSError(errno.EIO) from None

        def statfs(self, path: str) -> dict[str, int]:
            return {
                "f_bsize": 4096,
                "f_frsize": 4096,
                "f_blocks": -(-size // 4096),
                "f_namemax": 255,
            }

    return VolumeFS()


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.isdir(mountpoint):
        raise UsageError(f"{mountpoint}: not a directory; create an empty directory to mount on")
    if os.path.ismount(mountpoint):
        raise UsageError(f"{mountpoint}: something is already mounted there; unmount it first")
    if not os.path.exists("/dev/fuse"):
        raise UsageError(
            "/dev/fuse is missing: load the fuse kernel module (modprobe fuse) or, in a "
            "container, pass the device through (--device /dev/fuse)"
        )


def mount(
    volume: Volume,
    mountpoint: str,
    *,
    file_name: str = DEFAULT_FILE_NAME,
    allow_other: bool = False,
    debug: bool = False,
) -> None:
    """Mount read-only and serve until unmounted (``fusermount3 -u``) or SIGINT/SIGTERM."""
    if not file_name or "/" in file_name or file_name in (".", ".."):
        raise UsageError(f"file name {file_name!r}: use a plain name like {DEFAULT_FILE_NAME}")
    check_mountpoint(mountpoint)
    mfusepy = _load_mfusepy()
    session = Session()
    ops = make_operations(volume, file_name, mfusepy, session)
    try:
        mfusepy.FUSE(
            ops,
            mountpoint,
            foreground=True,
            ro=True,
            fsname="volpack",
            allow_other=allow_other,
            debug=debug,
        )
    except RuntimeError as exc:
        # libfuse reports a loop ended by SIGINT/SIGTERM as an error code, but it has unmounted
        # cleanly (destroy ran): that is the normal way to stop.
        if session.started and session.ended:
            log.info("%s: unmounted", mountpoint)
            return
        raise UsageError(
            f"{mountpoint}: FUSE mount failed ({exc}); check /dev/fuse, fusermount3 and permissions"
        ) from None
