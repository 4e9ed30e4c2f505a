"""``python -m experiments.bench``: see the package docstring and ``--help``."""

import sys

from experiments.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
