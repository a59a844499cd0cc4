"""``python -m detris.cli``: the ``detris`` command."""

import sys

from . import main

sys.exit(main())
