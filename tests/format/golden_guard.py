"""Command line of the make_golden*.py scripts: ``--help``, and no silent replacement.

Golden files are checked in and must decode forever, so a script run by mistake (with
``--help``, say) must not make them again; ``--replace`` says it is meant.
"""

from __future__ import annotations

import argparse
import os
import sys


def guard(doc: str | None, *paths: str) -> None:
    """Parse the script's arguments; exit with one line if a golden path exists already and
    ``--replace`` was not given."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="make the golden files of this format version again although they are checked in",
    )
    args = parser.parse_args()
    there = [p for p in paths if os.path.exists(p)]
    if there and not args.replace:
        sys.exit(
            f"{there[0]}: is checked in already and must decode forever; give --replace to "
            "make it again, then review the diff before committing"
        )
