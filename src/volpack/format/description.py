"""The archive description (the DESC record, docs/format.md §3.1) as a typed, frozen value.

Backup builds one and writes ``to_json()``; readers get ``from_json()``, which tolerates what the
spec allows: any key may be missing, unknown keys are kept (``extra``) and written back, and a
known key whose value has the wrong JSON type reads as missing (DESC is informational). It does
no I/O and knows nothing of sources or detectors beyond the recorded shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else _EMPTY


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


@dataclass(frozen=True, slots=True)
class SourceDescription:
    """Where the volume came from: ``kind`` (file, blockdev, qcow2, lvm …), ``path``, and the
    source kind's own ``details`` (a qcow2 backing chain, an LVM VG/LV with its PVs …)."""

    kind: str | None = None
    path: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_json(value: object) -> SourceDescription:
        d = _map(value)
        return SourceDescription(_str(d.get("kind")), _str(d.get("path")), _map(d.get("details")))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"kind": self.kind, "path": self.path, "details": dict(self.details)})


@dataclass(frozen=True, slots=True)
class RegionDescription:
    """One detection region: volume bytes ``[start, end)`` whose used blocks ``detector`` decided
    (a filesystem, a partition table, holes, zeros …), with the detector's ``details``."""

    start: int
    end: int
    detector: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_json(value: object) -> RegionDescription | None:
        d = _map(value)
        start, end, detector = _int(d.get("start")), _int(d.get("end")), _str(d.get("detector"))
        if start is None or end is None or detector is None:
            return None
        return RegionDescription(start, end, detector, _map(d.get("details")))

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "detector": self.detector,
            "details": dict(self.details),
        }


@dataclass(frozen=True, slots=True)
class DetectionDescription:
    """How the used map was made: the ``--detect`` ``mode``, the ``regions`` in volume order
    (``complete`` is False when a recorded region was malformed and left out), ``warnings``."""

    mode: str | None = None
    regions: tuple[RegionDescription, ...] = ()
    warnings: tuple[str, ...] = ()
    complete: bool = True

    @staticmethod
    def from_json(value: object) -> DetectionDescription:
        d = _map(value)
        raw = d.get("regions")
        items = raw if isinstance(raw, list) else []
        regions = [RegionDescription.from_json(r) for r in items]
        kept = tuple(r for r in regions if r is not None)
        warnings = d.get("warnings")
        return DetectionDescription(
            mode=_str(d.get("mode")),
            regions=kept,
            warnings=tuple(w for w in warnings if isinstance(w, str))
            if isinstance(warnings, list)
            else (),
            complete=len(kept) == len(items),
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "mode": self.mode,
                "regions": [r.to_json() for r in self.regions],
                "warnings": list(self.warnings),
            }
        )


@dataclass(frozen=True, slots=True)
class OptionsDescription:
    """The backup options that shaped the archive: ``compress`` as given (``zstd:1`` …) and
    whether a staging area was used."""

    compress: str | None = None
    staging: bool | None = None

    @staticmethod
    def from_json(value: object) -> OptionsDescription:
        d = _map(value)
        staging = d.get("staging")
        return OptionsDescription(
            _str(d.get("compress")), staging if isinstance(staging, bool) else None
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"compress": self.compress, "staging": self.staging})


@dataclass(frozen=True, slots=True)
class ChangesDescription:
    """How an incremental found what changed since its base: ``method`` (``hash-compare``,
    ``bitmap:NAME``, ``merge``), source bytes read for it, un-hinted hash blocks sampled, and why
    a hint was not used."""

    method: str | None = None
    read_bytes: int | None = None
    sampled: int | None = None
    warnings: tuple[str, ...] = ()

    @staticmethod
    def from_json(value: object) -> ChangesDescription:
        d = _map(value)
        read, sampled, warnings = d.get("read_bytes"), d.get("sampled"), d.get("warnings")
        return ChangesDescription(
            _str(d.get("method")),
            read if isinstance(read, int) and not isinstance(read, bool) else None,
            sampled if isinstance(sampled, int) and not isinstance(sampled, bool) else None,
            tuple(w for w in warnings if isinstance(w, str)) if isinstance(warnings, list) else (),
        )

    def to_json(self) -> dict[str, Any]:
        return _drop_none(
            {
                "method": self.method,
                "read_bytes": self.read_bytes,
                "sampled": self.sampled,
                "warnings": list(self.warnings),
            }
        )


_KNOWN = ("tool", "host", "source", "detection", "options", "changes")


@dataclass(frozen=True, slots=True)
class ArchiveDescription:
    """The DESC record: ``tool`` (``volpack VERSION``), ``host``, ``source``, ``detection``,
    ``options``; keys this version does not know stay in ``extra``."""

    tool: str | None = None
    host: str | None = None
    source: SourceDescription = field(default_factory=SourceDescription)
    detection: DetectionDescription = field(default_factory=DetectionDescription)
    options: OptionsDescription = field(default_factory=OptionsDescription)
    changes: ChangesDescription | None = None  # incrementals only
    extra: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_json(value: Mapping[str, Any]) -> ArchiveDescription:
        """From a decoded DESC object (``records.decode_desc`` refuses anything else)."""
        return ArchiveDescription(
            tool=_str(value.get("tool")),
            host=_str(value.get("host")),
            source=SourceDescription.from_json(value.get("source")),
            detection=DetectionDescription.from_json(value.get("detection")),
            options=OptionsDescription.from_json(value.get("options")),
            changes=ChangesDescription.from_json(value["changes"]) if "changes" in value else None,
            extra=MappingProxyType({k: v for k, v in value.items() if k not in _KNOWN}),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON object to record (``records.encode_desc``); unknown keys are written back."""
        return {
            **self.extra,
            **_drop_none({"tool": self.tool, "host": self.host}),
            "source": self.source.to_json(),
            "detection": self.detection.to_json(),
            "options": self.options.to_json(),
            **({"changes": self.changes.to_json()} if self.changes is not None else {}),
        }
