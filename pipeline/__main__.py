"""``python -m pipeline``: the same as the ``pipeline`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
