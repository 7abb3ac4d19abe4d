"""Tape URLs and volume changing for the tape medium: which drive holds which volume of a set.

``tape:DEV[,DEV…][?record-size=…&volume-size=…&next=CMD][#FILE]`` (``tape+emu:DIR…`` for the
emulator). Opening a drive, positioning it at a file, running the ``next`` command between volumes
and turning device errno values into MediumError all live here; record framing does not.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode

from volpack.errors import MediumError, MediumFull, MediumNotFound, MediumTransient, UsageError
from volpack.media.tape.device import ScsiTape, TapeDevice
from volpack.media.tape.records import DEFAULT_RECORD, check_record_size

log = logging.getLogger("volpack")

SCHEMES = ("tape", "tape+emu")
_OPTIONS = ("record-size", "volume-size", "next")


@dataclass(frozen=True, slots=True)
class TapeURL:
    url: str
    emulated: bool
    devices: tuple[str, ...]
    file_number: int | None  # 1-based file on the first device; None: where the tape stands
    record_size: int
    volume_size: int | None  # bytes per volume for media that do not signal their end
    next_command: str | None  # run between volumes (after the device list is used up)

    @property
    def display(self) -> str:
        """The URL without its options, for messages (the next command can be long)."""
        scheme = "tape+emu" if self.emulated else "tape"
        where = f"#{self.file_number}" if self.file_number is not None else ""
        return f"{scheme}:{','.join(self.devices)}{where}"


def parse_tape_url(url: str) -> TapeURL:
    from volpack.units import parse_size

    scheme, sep, rest = url.partition(":")
    if not sep or scheme.lower() not in SCHEMES:
        raise UsageError(f"{url}: not a tape URL; use tape:/dev/nst0 or tape+emu:DIR")
    rest, hashmark, fragment = rest.partition("#")
    file_number = None
    if hashmark:
        if not fragment.isdigit() or int(fragment) < 1:
            raise UsageError(f"{url}: '#{fragment}' is not a file number; use #1, #2, …")
        file_number = int(fragment)
    path, _, query = rest.partition("?")
    devices = tuple(d for d in path.split(",") if d)
    if not devices:
        raise UsageError(f"{url}: no tape device; use tape:/dev/nst0 or tape:/dev/nst0,/dev/nst1")
    record_size, volume_size, next_command = DEFAULT_RECORD, None, None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "record-size":
            record_size = parse_size(value, "tape option record-size")
        elif key == "volume-size":
            volume_size = parse_size(value, "tape option volume-size")
        elif key == "next":
            next_command = value or None
        else:
            raise UsageError(f"{url}: unknown tape option '{key}'; known: {', '.join(_OPTIONS)}")
    check_record_size(record_size)
    if volume_size is not None and volume_size < 4 * record_size:
        raise UsageError(
            f"{url}: volume size {volume_size} holds fewer than 4 records of {record_size} bytes; "
            "give a larger --volume-size"
        )
    return TapeURL(
        url,
        scheme.lower() == "tape+emu",
        devices,
        file_number,
        record_size,
        volume_size,
        next_command,
    )


def tape_url(
    url: str,
    *,
    record_size: int | None = None,
    volume_size: int | None = None,
    next_command: str | None = None,
) -> str:
    """``url`` with the CLI's --tape-record-size / --volume-size / --tape-next folded in."""
    head, hashmark, fragment = url.partition("#")
    opts = []
    if record_size is not None:
        opts.append(("record-size", str(record_size)))
    if volume_size is not None:
        opts.append(("volume-size", str(volume_size)))
    if next_command is not None:
        opts.append(("next", next_command))
    if opts:
        head += ("&" if "?" in head else "?") + urlencode(opts, quote_via=quote)
    return head + hashmark + fragment


def medium_error(dev: str, exc: OSError, doing: str) -> MediumError:
    """The MediumError for an errno from a tape device, with the remedy."""
    code = exc.errno
    what = os.strerror(code) if code else str(exc)
    if code == errno.ENOENT:
        return MediumNotFound(f"{dev}: no such tape device while {doing}; check the path")
    if code == errno.ENOMEDIUM:
        return MediumNotFound(f"{dev}: no tape loaded while {doing}; load a cartridge")
    if code == errno.EBUSY:
        return MediumTransient(f"{dev}: drive in use by another process; wait or use another drive")
    if code in (errno.EACCES, errno.EROFS):
        return MediumError(
            f"{dev}: tape is write-protected or not writable ({what}); use a writable cartridge"
        )
    if code == errno.ENOTTY:
        return MediumError(f"{dev}: not a tape device (MTIOCTOP refused); use /dev/nstN")
    if code == errno.ENOSPC:
        return MediumFull(f"{dev}: end of medium while {doing}")
    if code == errno.EIO:
        return MediumError(
            f"{dev}: read/write error (EIO) while {doing}; this is a device or media fault, not "
            "the end of the tape: clean the drive, retry, or use another copy"
        )
    return MediumError(f"{dev}: {what} while {doing}")


class VolumeChanger:
    """Hands out the drive for each volume: the URL's device list first, then the next command."""

    def __init__(self, parsed: TapeURL, *, write: bool, force: bool) -> None:
        self.parsed = parsed
        self.write = write
        self.force = force
        self._index = 0

    def _open(self, dev: str) -> TapeDevice:
        try:
            if self.parsed.emulated:
                from volpack.media.tape.emulator import EmulatedTape

                return EmulatedTape(dev, write=self.write)
            return ScsiTape(dev, write=self.write)
        except OSError as exc:
            raise medium_error(dev, exc, "opening it") from exc

    def _check_overwrite(self, device: TapeDevice, volume: int) -> None:
        if not self.write or self.force:
            return
        status = device.status()
        # Real drives cannot tell whether data follows without reading (at_eod is None).
        if status.at_eod is False:
            device.close()
            raise MediumError(
                f"{device.name}: the tape holds data at file {status.file_number} where volume "
                f"{volume} would be written, and writing destroys it and every later file; "
                "load a scratch tape, choose the file after the last one, or add --force"
            )

    def first(self) -> TapeDevice:
        dev = self.parsed.devices[0]
        device = self._open(dev)
        try:
            if self.parsed.file_number is not None:
                device.rewind()
                device.forward_files(self.parsed.file_number - 1)
        except OSError as exc:
            device.close()
            raise MediumNotFound(
                f"{self.parsed.display}: cannot space to file {self.parsed.file_number} "
                f"({os.strerror(exc.errno or errno.EIO)}): the tape holds fewer files, or a read "
                "error; check the file number"
            ) from exc
        self._check_overwrite(device, 1)
        return device

    def can_continue(self) -> bool:
        return self._index + 1 < len(self.parsed.devices) or bool(self.parsed.next_command)

    def next(self, volume: int, set_uuid: str) -> TapeDevice:
        """The drive holding (or to hold) ``volume``, positioned where the operator left it."""
        parsed = self.parsed
        if self._index + 1 < len(parsed.devices):
            self._index += 1
        elif parsed.next_command:
            self._run_next(volume, set_uuid)
        else:
            raise MediumFull(
                f"{parsed.display}: volume {volume} of tape set {set_uuid} is needed and no next "
                "volume is configured; give a device list (tape:/dev/nst0,/dev/nst1) or "
                "--tape-next CMD"
            )
        device = self._open(parsed.devices[self._index])
        self._check_overwrite(device, volume)
        return device

    def _run_next(self, volume: int, set_uuid: str) -> None:
        command = self.parsed.next_command or "false"
        dev = self.parsed.devices[self._index]
        env = dict(os.environ)
        env.update(
            VOLPACK_TAPE_DEVICE=dev,
            VOLPACK_TAPE_VOLUME=str(volume),
            VOLPACK_TAPE_SET=set_uuid,
            VOLPACK_TAPE_MODE="write" if self.write else "read",
        )
        log.info("tape: running the next-volume command for volume %d on %s", volume, dev)
        # The command's output goes to stderr: stdout carries volpack's results.
        done = subprocess.run(command, shell=True, env=env, stdout=2, check=False)
        if done.returncode != 0:
            raise MediumError(
                f"{self.parsed.display}: next-volume command exited with status {done.returncode} "
                f"before volume {volume}; fix the command or load volume {volume} and retry"
            )
