"""The programs behind ``portable-rnn``: never imported by library modules.

:mod:`~portable_rnn.app.cli` parses arguments and dispatches to
:mod:`~portable_rnn.app.train` (with :mod:`~portable_rnn.app.corpus`,
:mod:`~portable_rnn.app.checkpoint` and :mod:`~portable_rnn.app.report`),
:mod:`~portable_rnn.app.sample`, :mod:`~portable_rnn.app.check`,
:mod:`~portable_rnn.app.gradients` and :mod:`~portable_rnn.app.bench`.
"""
