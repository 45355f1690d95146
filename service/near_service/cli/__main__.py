"""``python -m near_service.cli``: the same as the ``near-select`` command."""

import sys

from near_service.cli.main import main

sys.exit(main())
