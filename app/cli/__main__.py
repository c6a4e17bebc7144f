"""``python -m app.cli``: the ``cimcal`` command."""

import sys

from app.cli import main

sys.exit(main())
