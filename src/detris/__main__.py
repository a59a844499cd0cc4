"""``python -m detris``: the ``detris`` command."""

import sys

from .cli import main

sys.exit(main())
