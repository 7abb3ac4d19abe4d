"""Shared CLI pieces: common options, medium options, sizes, progress bars and result output."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from volpack.units import human, parse_size

if TYPE_CHECKING:
    from volpack.pipeline.chain import Places

log = logging.getLogger("volpack")


def add_output_options(
    parser: argparse.ArgumentParser, *, json_flag: bool = True, progress: bool = True
) -> None:
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
    if progress:
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="progress bar on stderr (default: when stderr is a terminal)",
        )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_medium_options(parser: argparse.ArgumentParser, *, tape: bool = True) -> None:
    group = parser.add_argument_group("medium options")
    group.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (default: AWS config)")
    group.add_argument("--s3-profile", metavar="NAME", help="AWS profile for credentials")
    if not tape:
        return
    group.add_argument(
        "--tape-record-size",
        type=size_arg("--tape-record-size"),
        metavar="SIZE",
        help="tape record size (default 256Ki)",
    )
    group.add_argument(
        "--volume-size",
        type=size_arg("--volume-size"),
        metavar="SIZE",
        help="tape: start the next volume after this many bytes",
    )
    group.add_argument(
        "--tape-next",
        metavar="CMD",
        help="tape: command run to load the next volume when one is full",
    )


def apply_medium_options(args: argparse.Namespace) -> None:
    """Configure S3 and fold the tape options into a tape URL in ``args.archive``."""
    if getattr(args, "s3_endpoint", None) or getattr(args, "s3_profile", None):
        from volpack.media.s3.client import configure

        configure(endpoint=args.s3_endpoint, profile=args.s3_profile)
    tape_opts = tuple(
        getattr(args, name, None) for name in ("tape_record_size", "volume_size", "tape_next")
    )
    if any(v is not None for v in tape_opts):
        from volpack.errors import UsageError
        from volpack.media import scheme_of

        if not scheme_of(args.archive).startswith("tape"):
            raise UsageError(
                f"{args.archive}: --tape-record-size, --volume-size and --tape-next "
                "apply to tape: media only"
            )
        from volpack.media.tape import tape_url

        args.archive = tape_url(
            args.archive,
            record_size=tape_opts[0],
            volume_size=tape_opts[1],
            next_command=tape_opts[2],
        )


def size_arg(what: str) -> Callable[[str], int]:
    """An argparse ``type`` for the size option ``what``; a bad size raises UsageError (one line,
    exit 2, see cli.main). Tests find every size option through ``size_option``."""

    def parse(text: str) -> int:
        return parse_size(text, what)

    parse.size_option = what  # type: ignore[attr-defined]
    return parse


class Progress:
    """A tqdm bar per phase on stderr, only on a terminal unless forced."""

    LABELS = {
        "scan": "scanning",
        "stage": "staging",
        "write": "writing",
        "restore": "restoring",
        "verify": "verifying",
    }

    def __init__(self, args: argparse.Namespace) -> None:
        wanted = getattr(args, "progress", None)
        self.enabled = (sys.stderr.isatty() if wanted is None else wanted) and not getattr(
            args, "quiet", False
        )
        self._bar: Any = None
        self._phase = ""

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase != self._phase:
            self.close()
            from tqdm import tqdm

            self._phase = phase
            self._bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=self.LABELS.get(phase, phase),
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._phase = ""


def emit(
    args: argparse.Namespace, result: dict[str, Any], lines: list[str], *, to_stderr: bool = False
) -> None:
    """Results on stdout (stderr when stdout carries an archive): JSON with --json, else lines."""
    out = sys.stderr if to_stderr else sys.stdout
    if getattr(args, "json", False):
        json.dump(result, out, indent=2, sort_keys=True)
        out.write("\n")
    elif not (to_stderr and getattr(args, "quiet", False)):
        for line in lines:
            print(line, file=out)
    out.flush()


def rate(nbytes: int, seconds: float) -> str:
    return f"{human(nbytes / seconds)}/s" if seconds > 0 else "-"


def share(used: int, size: int) -> str:
    """'12.5%' of a volume; an empty volume has no share to give."""
    return f"{100.0 * used / size:.1f}%" if size else "empty volume"


def add_search_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="DIR|PREFIX",
        help="where else to look for an incremental's base archives (after its own directory "
        "or prefix and the catalog); repeat",
    )


def places_from(args: argparse.Namespace) -> Places:
    """Where an incremental's bases are looked for: ``--search`` and the catalog."""
    from volpack.catalog.record import catalog_path
    from volpack.pipeline.chain import Places

    catalog = getattr(args, "catalog", None)
    keyring = None
    if hasattr(args, "identity"):  # the verb takes keys (cli.keys.add_open_options)
        from volpack.cli.keys import keyring_from

        keyring = keyring_from(args)
    return Places(search=tuple(args.search), catalog=catalog_path(catalog), keyring=keyring)
