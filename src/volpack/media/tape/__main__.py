"""The tape emulator's command line: make, load and change emulated cartridges.

``python -m volpack.media.tape new|load|unload|next|inject-eio …`` (see docs/tape.md); a
``--tape-next`` command uses ``next``. The only code under media/ that prints or exits.
"""

from __future__ import annotations

import os
import sys

from volpack.errors import VolpackError
from volpack.media.tape.emulator import (
    create_cartridge,
    inject_read_error,
    load,
    loaded,
    unload,
)
from volpack.units import parse_size


def main(argv: list[str] | None = None) -> int:
    """``python -m volpack.media.tape`` — manage emulated cartridges, e.g. from ``--tape-next``.

    new CART CAPACITY [EARLY_WARNING] | load DRIVE CART | unload DRIVE |
    next DRIVE CART... (load the cartridge after the loaded one) | inject-eio CART FILE RECORD
    """
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        verb, rest = args[0], args[1:]
        if verb == "new" and len(rest) in (2, 3):
            ew = parse_size(rest[2]) if len(rest) == 3 else 0
            create_cartridge(rest[0], capacity=parse_size(rest[1]), early_warning=ew)
        elif verb == "load" and len(rest) == 2:
            load(rest[0], rest[1])
        elif verb == "unload" and len(rest) == 1:
            unload(rest[0])
        elif verb == "next" and len(rest) >= 2:
            carts = [os.path.abspath(c) for c in rest[1:]]
            current = loaded(rest[0])
            i = carts.index(current) + 1 if current in carts else 0
            if i >= len(carts):
                print(
                    f"volpack.media.tape: {rest[0]}: no cartridge after {current}", file=sys.stderr
                )
                return 1
            load(rest[0], carts[i])
        elif verb == "inject-eio" and len(rest) == 3:
            inject_read_error(rest[0], int(rest[1]), int(rest[2]))
        else:
            print(main.__doc__, file=sys.stderr)
            return 2
    except (OSError, ValueError, VolpackError) as exc:
        print(f"volpack.media.tape: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
