"""Deterministic benchmark images: scattered ext4, 8 GiB sparse, 1 GiB dense random, qcow2 of
ext4, 4 GiB with unaligned random extents, and a 1 MiB image for start-up.

Every byte comes from numpy generators with fixed seeds; data is a mix of random bytes
(incompressible) and generated text (about 3x with zstd -1), like a real disk.
Images are cached under the work directory with a stamp recording the recipe version and the
measured shape; they are rebuilt only when the recipe changes or --rebuild is given. A scale
below 1 shrinks every size (a quick check that the bench works, never target numbers).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Bump an image's number when its recipe changes, so that cached copies are rebuilt.
RECIPES = {"ext4": 2, "sparse": 1, "dense": 1, "qcow2": 2, "unaligned": 1, "small": 1}
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True, slots=True)
class Image:
    name: str  # short name used by --only
    path: Path
    fmt: str  # "raw" or "qcow2"
    shape: dict  # measured at build time: size, allocated, non-zero bytes, live bytes, ...


def _text(rng: np.random.Generator, n: int) -> bytes:
    """n bytes of word-like text with a Zipf-ish word distribution (semi-compressible)."""
    letters = np.frombuffer(b"etaoinshrdlucmfwypvbgkqjxz", dtype=np.uint8)
    vocab = []
    for length in rng.integers(2, 11, 3000):
        vocab.append(bytes(letters[rng.integers(0, 26, length) % 26]) + b" ")
    vocab[100:160] = [w[:-1] + b".\n" for w in vocab[100:160]]
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 0.9
    weights /= weights.sum()
    words = np.array(vocab, dtype=object)
    out = []
    have = 0
    while have < n:
        chunk = b"".join(words[rng.choice(len(vocab), 200_000, p=weights)])
        out.append(chunk)
        have += len(chunk)
    return b"".join(out)[:n]


class DataGen:
    """Seeded source of file contents: a random or a text body, half and half by bytes."""

    def __init__(self, seed: int, pool: int = 64 * MiB) -> None:
        self.rng = np.random.default_rng(seed)
        self.text_pool = _text(np.random.default_rng(seed + 1), pool)
        self.max_slice = min(4 * MiB, pool // 2)

    def body(self, n: int) -> bytes:
        if self.rng.random() < 0.5:
            return self.rng.bytes(n)
        # Slices of a 64 MiB pool at random offsets: further apart than zstd's window at the
        # levels benchmarked, so compression comes from the text, not from repetition.
        parts, have = [], 0
        while have < n:
            take = min(n - have, int(self.rng.integers(256 * KiB, self.max_slice)))
            at = int(self.rng.integers(0, len(self.text_pool) - take))
            parts.append(self.text_pool[at : at + take])
            have += take
        return b"".join(parts)


def _run(argv: list[str], ok: tuple[int, ...] = (0,)) -> str:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def nonzero_bytes(path: Path, block: int = 4096) -> int:
    """Bytes in non-zero 4 KiB blocks (holes skipped), the shape a zero-scan detector sees."""
    total = 0
    chunk = 64 * MiB
    with open(path, "rb", buffering=0) as f:
        fd, end, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while pos < end:
            try:
                pos = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            hole = os.lseek(fd, pos, os.SEEK_HOLE)
            while pos < hole:
                data = os.pread(fd, min(chunk, hole - pos), pos)
                blocks = np.frombuffer(data[: len(data) // block * block], np.uint64)
                used = blocks.reshape(-1, block // 8).any(axis=1)
                total += int(used.sum()) * block + (len(data) % block and block)
                pos += len(data)
    return total


def _log_sizes(rng: np.random.Generator, lo: int, hi: int, total: int) -> list[int]:
    sizes, have = [], 0
    while have < total:
        s = int(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        s = min(s, total - have)
        sizes.append(s)
        have += s
    return sizes


def _scaled(n: int, scale: float, floor: int = 64 * KiB) -> int:
    """n times scale, in whole 4 KiB blocks, at least floor (n itself at scale 1)."""
    return n if scale == 1 else max(floor, int(n * scale) // 4096 * 4096)


def _gen(seed: int, scale: float) -> DataGen:
    return DataGen(seed, _scaled(64 * MiB, scale, 4 * MiB))


def build_ext4(path: Path, scratch: Path, scale: float = 1.0) -> dict:
    """4 GiB ext4: ≈1.55 GiB via mkfs.ext4 -d, delete ≈0.4 GiB, write ≈0.12 GiB more.

    Aimed shape: ≈1.38 GiB live (files and metadata), ≈1.6 GiB non-zero (stale data of deleted
    files included), usage scattered over the block groups.
    """
    gen = _gen(2, scale)
    rng = np.random.default_rng(3)
    tree = scratch / "ext4-tree"
    shutil.rmtree(tree, ignore_errors=True)
    files = []
    big = _scaled(48 * MiB, scale)
    for i, size in enumerate(_log_sizes(rng, 4 * KiB, big, _scaled(1550 * MiB, scale))):
        rel = f"d{i % 37:02d}/f{i:05d}.{'dat' if i % 3 else 'txt'}"
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(gen.body(size))
        files.append((rel, size))
    for i, size in enumerate(_log_sizes(rng, 64, 16 * KiB, _scaled(24 * MiB, scale))):
        rel = f"small/s{i // 500:02d}/t{i:05d}.txt"
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(gen.text_pool[i * 997 : i * 997 + size])
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(_scaled(4 * GiB, scale, 64 * MiB))
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            "4096",
            "-U",
            "6d1f7c3e-9a55-4c2b-8a0e-2f7b1d5e9c41",
            "-E",
            "hash_seed=0b9e6a44-1c1d-4b6b-a6c5-9d7a8f3e2b10,root_owner=0:0",
            "-d",
            str(tree),
            str(path),
        ]
    )
    # Scatter usage: delete a seeded quarter of the big files, then write new files into the
    # free space (debugfs, no mount needed). Deleted data stays on disk: non-zero > live.
    order = rng.permutation(len(files))
    cmds, removed = [], 0
    for k in order:
        if removed >= _scaled(400 * MiB, scale):
            break
        cmds.append(f"rm /{files[k][0]}")
        removed += files[k][1]
    new_dir = scratch / "ext4-new"
    shutil.rmtree(new_dir, ignore_errors=True)
    new_dir.mkdir(parents=True)
    cmds.append("mkdir /new")
    new_big = _scaled(24 * MiB, scale, 128 * KiB)
    for i, size in enumerate(_log_sizes(rng, 64 * KiB, new_big, _scaled(120 * MiB, scale))):
        host = new_dir / f"n{i:04d}"
        host.write_bytes(gen.body(size))
        cmds.append(f"write {host} /new/n{i:04d}")
    script = scratch / "ext4-debugfs.cmd"
    script.write_text("\n".join(cmds) + "\n")
    _run(["debugfs", "-w", "-f", str(script), str(path)])
    # debugfs leaves summary counts for fsck to fix (exit 1); a second pass must find nothing.
    _run(["e2fsck", "-fy", str(path)], ok=(0, 1))
    _run(["e2fsck", "-fn", str(path)])
    shutil.rmtree(tree)
    shutil.rmtree(new_dir)
    stats = _run(["dumpe2fs", "-h", str(path)])
    fields = dict(line.split(":", 1) for line in stats.splitlines() if ":" in line)
    blocks = int(fields["Block count"])
    free = int(fields["Free blocks"])
    return {"live": (blocks - free) * 4096, "deleted_bytes": removed}


def build_sparse(path: Path, scale: float = 1.0) -> dict:
    """8 GiB sparse file, ≈10 % data in random extents of 64 KiB–16 MiB at random places."""
    gen = _gen(5, scale)
    rng = np.random.default_rng(6)
    size = _scaled(8 * GiB, scale, 64 * MiB)
    big = _scaled(16 * MiB, scale, 128 * KiB)
    lengths = [((s + 4095) // 4096) * 4096 for s in _log_sizes(rng, 64 * KiB, big, size // 10)]
    gaps = rng.dirichlet(np.ones(len(lengths) + 1)) * (size - sum(lengths))
    gaps = (gaps // 4096).astype(np.int64) * 4096
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        for gap, length in zip(gaps, lengths, strict=False):
            pos += int(gap)
            os.pwrite(f.fileno(), gen.body(length), pos)
            pos += length
    return {"extents": len(lengths)}


def build_dense(path: Path, scale: float = 1.0) -> dict:
    """1 GiB of random bytes: incompressible, no holes, no zero blocks."""
    rng = np.random.default_rng(7)
    with open(path, "wb") as f:
        for _ in range(16):
            f.write(rng.bytes(_scaled(64 * MiB, scale)))
    return {}


def build_unaligned(path: Path, scale: float = 1.0) -> dict:
    """4 GiB sparse file, 10 % random bytes in extents of 4 KiB–2 MiB at unaligned offsets.

    Neither the extents' starts nor their lengths are multiples of 4 KiB, so most extents begin
    and end inside a block that is partly zero, and holes between close extents are shorter than
    a block: the shape of data written by a guest whose writes do not line up with the image
    file's blocks. Random bytes (incompressible) so that compression does not hide the copy.
    """
    rng = np.random.default_rng(11)
    size = _scaled(4 * GiB, scale, 64 * MiB)
    lengths = _log_sizes(rng, 4 * KiB, 2 * MiB, size // 10)
    gaps = rng.dirichlet(np.ones(len(lengths) + 1)) * (size - sum(lengths))
    path.unlink(missing_ok=True)
    unaligned = 0
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        for gap, length in zip(gaps.astype(np.int64), lengths, strict=False):
            pos += int(gap)
            unaligned += pos % 4096 != 0
            os.pwrite(f.fileno(), rng.bytes(length), pos)
            pos += length
    return {"extents": len(lengths), "unaligned_starts": unaligned}


def build_small(path: Path) -> dict:
    """1 MiB, half random bytes and half text: a backup whose time is mostly start-up."""
    gen = DataGen(13, 4 * MiB)
    rng = np.random.default_rng(13)
    with open(path, "wb") as f:
        f.write(rng.bytes(512 * KiB) + gen.text_pool[: 512 * KiB])
    return {}


def build_qcow2(path: Path, ext4: Path) -> dict:
    """The ext4 image converted to qcow2 (64 KiB clusters, zero clusters left unallocated)."""
    path.unlink(missing_ok=True)
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(ext4), str(path)])
    info = json.loads(_run(["qemu-img", "info", "--output=json", str(path)]))
    return {"virtual": info["virtual-size"]}


ORDER = ("ext4", "sparse", "dense", "qcow2", "unaligned", "small")


def ensure(names: list[str], workdir: Path, rebuild: bool, log, scale: float = 1.0) -> list[Image]:
    """Build (or reuse cached) images for the given names, in ORDER; qcow2 needs ext4's file.

    Images at a scale below 1 live in their own folder, so a quick check keeps the full cache.
    """
    img_dir = workdir / ("images" if scale == 1 else f"images-scale-{scale:g}")
    img_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ORDER:
        if name not in names:
            continue
        fmt = "qcow2" if name == "qcow2" else "raw"
        path = img_dir / f"{name}.{'qcow2' if fmt == 'qcow2' else 'img'}"
        stamp = img_dir / f"{name}.json"
        shape = None
        if not rebuild and path.exists() and stamp.exists():
            saved = json.loads(stamp.read_text())
            if saved.get("recipe") == RECIPES[name] and saved.get("scale", 1.0) == scale:
                shape = saved
        if shape is None:
            log(f"building {name} image at {path} …")
            if name == "ext4":
                extra = build_ext4(path, workdir / "scratch", scale)
            elif name == "sparse":
                extra = build_sparse(path, scale)
            elif name == "dense":
                extra = build_dense(path, scale)
            elif name == "unaligned":
                extra = build_unaligned(path, scale)
            elif name == "small":
                extra = build_small(path)
            else:
                ext4 = img_dir / "ext4.img"
                if not ext4.exists():
                    raise RuntimeError("the qcow2 image is made from ext4.img; include ext4")
                extra = build_qcow2(path, ext4)
            st = path.stat()
            shape = {
                "recipe": RECIPES[name],
                "scale": scale,
                "size": st.st_size,
                "allocated": st.st_blocks * 512,
                "nonzero": nonzero_bytes(path) if fmt == "raw" else None,
                **extra,
            }
            stamp.write_text(json.dumps(shape, indent=1) + "\n")
        out.append(Image(name, path, fmt, shape))
    return out
