"""``python -m dramatiq_preview`` is the ``dramatiq-preview`` command."""

import sys

from .cli import main

sys.exit(main())
