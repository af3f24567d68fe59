"""``python -m cosmic.foundation train|embed ...`` (and ``torchrun ... -m cosmic.foundation train ...``):
the command line of :mod:`cosmic.foundation.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
