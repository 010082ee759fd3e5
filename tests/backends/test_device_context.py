"""``Backend.context()``: CuPy's current device for programs, a null context elsewhere.

CuPy is not installed here and no GPU is at hand: its branch is checked with a
stand-in device that records being entered; the real ``cupy.cuda.Device`` is
only exercised where CuPy and a GPU are (``portable-rnn check --backend cupy``).
"""

from __future__ import annotations

import contextlib

from portable_rnn import backends


def test_every_library_but_cupy_gets_a_null_context():
    available, _ = backends.discover([n for n in backends.BACKEND_NAMES if n != "cupy"])
    assert "numpy" in available
    for name, backend in available.items():
        context = backend.context()
        assert isinstance(context, contextlib.nullcontext), name
        with context:
            pass


def test_cupy_enters_its_device():
    events = []

    class StandInDevice:  # what cupy.cuda.Device(i) does for the context: make i current, then restore
        def __enter__(self):
            events.append("enter")
            return self

        def __exit__(self, *exc):
            events.append("exit")

    backend = backends.Backend("cupy:1", "cupy", None, StandInDevice())
    with backend.context():
        events.append("body")
    assert events == ["enter", "body", "exit"]
