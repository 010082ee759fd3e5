"""The engine: one recurrent layer over time, forward and backward, on any Array API backend.

Four parts, each one idea:

:mod:`~portable_rnn.engine.cells`
    one time step of each cell and its hand-written backward (the equations);
:mod:`~portable_rnn.engine.sequence`
    the pass over time: hoisted projections, tapes, masks, truncation, checkpointed segments;
:mod:`~portable_rnn.engine.loop`
    the time loop itself (a Python loop, or ``jax.lax.scan`` while JAX traces);
:mod:`~portable_rnn.engine.kernels`
    the NumPy and CPU-torch kernels that :mod:`~portable_rnn.engine.sequence` asks once per pass,
    each registered for a cell by name and proven equal to the portable path.

The layers, the course faces and the torch and JAX front ends are built on
:func:`~portable_rnn.engine.sequence.forward` and
:func:`~portable_rnn.engine.sequence.backward`.
"""
