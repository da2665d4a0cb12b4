"""``python -m biobench ARGS`` is the ``biobench`` command (e.g. ``python -m biobench grid
configs/offline.toml``), for environments where the console script is not on PATH."""

import sys

from biobench.cli import main

sys.exit(main())
