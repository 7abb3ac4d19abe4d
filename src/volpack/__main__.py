"""``python -m volpack`` runs the console script."""

import sys

from volpack.cli import main

sys.exit(main())
