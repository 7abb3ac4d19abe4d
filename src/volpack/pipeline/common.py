"""What the verb modules share: defaults, the progress callback, option checks, the local file
an archive URL names, and the scatter step (frames in dense order → volume writes).

No flow lives here; each verb's module reads top to bottom as the flow it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from volpack.compact.table import AddressTable
from volpack.errors import UsageError
from volpack.format import records as R
from volpack.identity import Role

if TYPE_CHECKING:
    from volpack.format.reader import ArchiveStream

DEFAULT_BLOCK = 4096
DEFAULT_FRAME = 4 << 20
DEFAULT_COMPRESS = "zstd:1"

# progress(phase, done, total): phase is "scan", "stage", "write", "restore", "verify".
Progress = Callable[[str, int, int], None]


def parse_compress(text: str) -> tuple[int, int]:
    """'none' | 'zstd' | 'zstd:LEVEL' → (codec, level)."""
    name, _, level = text.partition(":")
    if name == "none" and not level:
        return R.CODEC_NONE, 0
    if name == "zstd":
        try:
            lvl = int(level) if level else 1
        except ValueError:
            lvl = 99
        if not -7 <= lvl <= 22:
            raise UsageError(f"--compress {text}: zstd level must be a number from -7 to 22")
        return R.CODEC_ZSTD, lvl
    raise UsageError(f"--compress {text}: unknown codec; use none, zstd or zstd:LEVEL")


def check_block_size(block_size: int, frame_size: int) -> None:
    if not (block_size & (block_size - 1) == 0 and R.MIN_BLOCK <= block_size <= R.MAX_BLOCK):
        raise UsageError(f"--block-size {block_size}: must be a power of two from 512 to 1 MiB")
    if not (frame_size & (frame_size - 1) == 0 and R.MIN_FRAME <= frame_size <= R.MAX_FRAME):
        raise UsageError(f"--frame-size {frame_size}: must be a power of two from 64 KiB to 64 MiB")
    if frame_size < block_size:
        raise UsageError(f"--frame-size {frame_size} is smaller than --block-size {block_size}")


def medium_roles(url: str, what: str, choose: str, stdio: str) -> list[Role]:
    """The local file an archive URL names (``stdio``, /dev/stdout or /dev/stdin, for '-': a
    redirection may point it at the source or target); nothing for remote media."""
    from volpack.media import local_file

    path = local_file(url, stdio=stdio)
    return [] if path is None else [Role(path, what, choose)]


def scatter(
    stream: ArchiveStream,
    table: AddressTable,
    volume_size: int,
    write_at: Callable[[int, memoryview], None],
    total: int,
    progress: Progress | None,
) -> None:
    """Frames in dense order → writes at volume offsets (increasing), clipped to the volume.
    ``write_at`` must be done with its bytes when it returns: their buffer serves a later
    frame."""
    for dense_offset, raw in stream.frames(reuse=True):
        vs, lens, ds = table.dense_to_volume(dense_offset, dense_offset + len(raw))
        for v, n, d in zip(vs.tolist(), lens.tolist(), ds.tolist(), strict=True):
            n = min(n, volume_size - v)
            if n > 0:
                pos = d - dense_offset
                write_at(v, raw[pos : pos + n])
        if progress is not None:
            progress("restore", dense_offset + len(raw), total)
