"""``python -m latentgeo.cli``: the same as the ``latentgeo`` command."""

import sys

from . import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
