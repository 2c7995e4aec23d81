"""``python -m atp.cli``: the same as ``atp-export``."""

import sys

from atp.cli import main

sys.exit(main())
