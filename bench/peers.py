"""What is timed on each image: peer tools and volpack, as command specs (no execution here).

Every peer that writes a file is followed by `sync FILE` (fsync of that file) inside the timed
command, because volpack's file medium and restore fsync what they write. Restores read the
output of the matching backup, so backups keep their output until the image is done.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from images import Image
from limits import READ_SIZES

VOLPACK = (sys.executable, "-m", "volpack")
LIMITS = (sys.executable, "-I", "-S", str(Path(__file__).resolve().parent / "limits.py"))
# Images with a short peer list: the issue compares them with cp (and qemu-img for context).
FEW_PEERS = {"unaligned", "small"}
SHORT_LIST = {"cp --sparse=always", "qemu-img convert -O qcow2", "qemu-img convert -O raw"}


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    kind: str  # "backup", "restore", "level", "limit" or "startup"
    peer: bool
    cmds: tuple[tuple[str, ...], ...]
    output: Path  # file or directory that is measured, and removed before each repetition
    warm: Path  # the input, read once before each repetition
    keep: bool = False  # keep the output after timing (a restore reads it)
    mkdir: bool = False  # the output is a directory to create before the run
    prep: tuple[tuple[str, ...], ...] = ()  # untimed commands before each repetition
    issue: int = 2  # which issue asked for the row


def _synced(cmd: tuple[str, ...], out: Path) -> tuple[tuple[str, ...], ...]:
    return (cmd, ("sync", str(out)))


def _peer(
    name: str,
    kind: str,
    cmd: tuple[str, ...],
    out: Path,
    src: Path,
    keep: bool = False,
    sync_path: Path | None = None,
    mkdir: bool = False,
) -> Spec:
    return Spec(name, kind, True, _synced(cmd, sync_path or out), out, src, keep, mkdir)


def limit_specs(img: Image, out: Path) -> list[Spec]:
    """The machine's limit for this image: read its data from the page cache, and write + fsync
    as many bytes to a new file. Rows of kind "limit"; run.py sums them into each row's share."""
    nbytes = int(img.shape["allocated"])
    reads = [
        Spec(
            f"limit: page-cache read of the input, {size >> 10} KiB reads",
            "limit",
            False,
            ((*LIMITS, "read", str(img.path), str(size)),),
            out / "limit-read",  # nothing is written
            img.path,
            issue=15,
        )
        for size in READ_SIZES
    ]
    return [
        *reads,
        Spec(
            f"limit: write + fsync of {nbytes / (1 << 20):.1f} MiB",
            "limit",
            False,
            ((*LIMITS, "write", str(out / "limit.out"), str(nbytes)),),
            out / "limit.out",
            img.path,
            issue=15,
        ),
    ]


def startup_specs(img: Image, out: Path) -> list[Spec]:
    """Start-up: the bare interpreter (the floor any Python tool pays) and `volpack --version`."""
    return [
        Spec(
            "python3 -c pass (interpreter start)",
            "startup",
            True,
            ((sys.executable, "-c", "pass"),),
            out / "none",
            img.path,
            issue=15,
        ),
        Spec(
            "volpack --version",
            "startup",
            False,
            ((*VOLPACK, "--version"),),
            out / "none",
            img.path,
            issue=15,
        ),
    ]


def peer_specs(img: Image, out: Path) -> list[Spec]:
    """Backups then restores by the peer tools that apply to this image."""
    specs = _peer_specs(img, out)
    if img.name in FEW_PEERS:
        specs = [sp for sp in specs if sp.name in SHORT_LIST]
    return specs


def _peer_specs(img: Image, out: Path) -> list[Spec]:
    src, s = img.path, str(img.path)
    if img.fmt == "qcow2":
        return [
            _peer(
                "qemu-img convert -O raw",
                "backup",
                ("qemu-img", "convert", "-f", "qcow2", "-O", "raw", s, str(out / "q.raw")),
                out / "q.raw",
                src,
                True,
            ),
            _peer(
                "qemu-img convert -O qcow2",
                "backup",
                ("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", s, str(out / "q.qcow2")),
                out / "q.qcow2",
                src,
                True,
            ),
            # Restores of those backups to a raw image, as volpack restores its archive.
            _peer(
                "cp --sparse=always",
                "restore",
                ("cp", "--sparse=always", str(out / "q.raw"), str(out / "r-cp.img")),
                out / "r-cp.img",
                out / "q.raw",
            ),
            _peer(
                "qemu-img convert -O raw",
                "restore",
                (
                    "qemu-img",
                    "convert",
                    "-f",
                    "qcow2",
                    "-O",
                    "raw",
                    str(out / "q.qcow2"),
                    str(out / "r-q.img"),
                ),
                out / "r-q.img",
                out / "q.qcow2",
            ),
        ]
    specs = [
        _peer(
            "cp --sparse=always",
            "backup",
            ("cp", "--sparse=always", s, str(out / "cp.img")),
            out / "cp.img",
            src,
            True,
        ),
        _peer(
            "qemu-img convert -O qcow2",
            "backup",
            ("qemu-img", "convert", "-f", "raw", "-O", "qcow2", s, str(out / "q.qcow2")),
            out / "q.qcow2",
            src,
            True,
        ),
    ]
    if img.name == "ext4":
        specs.append(
            _peer(
                "partclone.ext4 -c",
                "backup",
                (
                    "partclone.ext4",
                    "-c",
                    "-q",
                    "-L",
                    "/dev/null",
                    "-s",
                    s,
                    "-O",
                    str(out / "pc.img"),
                ),
                out / "pc.img",
                src,
                True,
            )
        )
    specs += [
        _peer(
            "img2simg", "backup", ("img2simg", s, str(out / "s.simg")), out / "s.simg", src, True
        ),
        _peer(
            "tar -S -cf",
            "backup",
            ("tar", "-S", "-cf", str(out / "t.tar"), "-C", str(src.parent), src.name),
            out / "t.tar",
            src,
            True,
        ),
        _peer(
            "zstd -T0",
            "backup",
            ("zstd", "-q", "-f", "-T0", s, "-o", str(out / "z.zst")),
            out / "z.zst",
            src,
            True,
        ),
    ]
    restores = [
        ("cp --sparse=always", ("cp", "--sparse=always", str(out / "cp.img"), "{o}"), "cp.img"),
        (
            "qemu-img convert -O raw",
            ("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out / "q.qcow2"), "{o}"),
            "q.qcow2",
        ),
        (
            "partclone.ext4 -r",
            (
                "partclone.ext4",
                "-r",
                "-q",
                "-L",
                "/dev/null",
                "-s",
                str(out / "pc.img"),
                "-O",
                "{o}",
            ),
            "pc.img",
        ),
        ("simg2img", ("simg2img", str(out / "s.simg"), "{o}"), "s.simg"),
        ("zstd -d", ("zstd", "-q", "-f", "-d", str(out / "z.zst"), "-o", "{o}"), "z.zst"),
    ]
    for name, cmd, needs in restores:
        if needs == "pc.img" and img.name != "ext4":
            continue
        o = out / f"r-{needs}.img"
        argv = tuple(str(o) if a == "{o}" else a for a in cmd)
        spec = _peer(name, "restore", argv, o, out / needs)
        if needs == "pc.img":
            # partclone restores onto a device: give it one of the right size (untimed).
            spec = replace(spec, prep=(("truncate", "-s", str(img.shape["size"]), str(o)),))
        specs.append(spec)
    tar_dir = out / "r-tar"
    specs.append(
        _peer(
            "tar -xSf",
            "restore",
            ("tar", "-xSf", str(out / "t.tar"), "-C", str(tar_dir)),
            tar_dir,
            out / "t.tar",
            sync_path=tar_dir / src.name,
            mkdir=True,
        )
    )
    return specs


def _vp(
    name: str,
    kind: str,
    args: tuple[str, ...],
    out: Path,
    src: Path,
    keep: bool = False,
    issue: int = 2,
) -> Spec:
    return Spec(name, kind, False, ((*VOLPACK, *args),), out, src, keep, False, (), issue)


def volpack_specs(img: Image, out: Path) -> list[Spec]:
    """volpack backups (uncompressed, default zstd, filesystem detector) and their restores."""
    s = str(img.path)
    if img.fmt == "qcow2":
        return [
            _vp(
                "volpack backup --compress none",
                "backup",
                ("backup", s, str(out / "vp-none.vpk"), "--compress", "none"),
                out / "vp-none.vpk",
                img.path,
                True,
                issue=4,
            ),
            _vp(
                "volpack backup",
                "backup",
                ("backup", s, str(out / "vp.vpk")),
                out / "vp.vpk",
                img.path,
                True,
                issue=4,
            ),
            _vp(
                "volpack restore (none)",
                "restore",
                ("restore", str(out / "vp-none.vpk"), str(out / "r-vp-none.img")),
                out / "r-vp-none.img",
                out / "vp-none.vpk",
                issue=15,
            ),
        ]
    # (backup label, backup options, archive tag, restore label, issue)
    variants = [
        ("--compress none", ("--compress", "none"), "none", "none", 2),
        ("(zstd default)", (), "zstd", "zstd default", 2),
    ]
    if img.name == "ext4":
        variants += [
            (
                "--detect fs --compress none",
                ("--detect", "fs", "--compress", "none"),
                "fs-none",
                "fs, none",
                3,
            ),
            ("--detect fs", ("--detect", "fs"), "fs-zstd", "fs, zstd default", 3),
        ]
    specs = []
    for label, args, tag, _rlabel, issue in variants:
        vpk = out / f"vp-{tag}.vpk"
        specs.append(
            _vp(
                f"volpack backup {label}",
                "backup",
                ("backup", s, str(vpk), *args),
                vpk,
                img.path,
                True,
                issue,
            )
        )
    for _label, _args, tag, rlabel, issue in variants:
        vpk, o = out / f"vp-{tag}.vpk", out / f"r-vp-{tag}.img"
        specs.append(
            _vp(
                f"volpack restore ({rlabel})",
                "restore",
                ("restore", str(vpk), str(o)),
                o,
                vpk,
                issue=issue,
            )
        )
    return specs


def level_specs(img: Image, out: Path, levels: list[str]) -> list[Spec]:
    """volpack backup of one image at each compression setting, for the level table."""
    return [
        _vp(
            f"--compress {lv}",
            "level",
            (
                "backup",
                str(img.path),
                str(out / f"lv-{lv.replace(':', '-')}.vpk"),
                "--compress",
                lv,
            ),
            out / f"lv-{lv.replace(':', '-')}.vpk",
            img.path,
        )
        for lv in levels
    ]
