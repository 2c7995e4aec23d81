"""Token-retention scorers, one per file, registered in ``atp.registry.SCORERS``.

Importing this package registers every scorer module in it (``base`` and ``selection`` hold shared code): a new
scorer is a new file.
"""

from atp.registry import import_submodules

import_submodules(__name__, __path__, skip=("base", "selection"))
