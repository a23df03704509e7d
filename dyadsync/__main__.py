"""``python -m dyadsync`` is the ``dyadsync`` console script."""

import sys

from dyadsync.cli import main

sys.exit(main())
