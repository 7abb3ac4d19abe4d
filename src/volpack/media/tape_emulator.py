"""The tape emulator's former command name, kept so that ``python -m volpack.media.tape_emulator …``
(in scripts and ``--tape-next`` commands written for earlier releases) still runs. The command is
``python -m volpack.media.tape``; the emulator itself is ``volpack.media.tape.emulator``.
"""

from __future__ import annotations

import sys

from volpack.media.tape.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
