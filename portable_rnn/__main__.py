"""``python -m portable_rnn``: the ``portable-rnn`` command line."""

import sys

from .app.cli import main

sys.exit(main())
