"""``python -m portable_rnn.app.bench [flags]``: the same as ``portable-rnn bench [flags]``."""

import sys

from ..cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
