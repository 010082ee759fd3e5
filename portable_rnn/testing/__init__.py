"""Helpers shared by the test suite and ``portable-rnn check``: documented fixtures, finite differences."""
