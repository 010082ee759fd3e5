"""The engine: one recurrent layer over time, forward and backward, on any Array API backend.

Four parts, each one idea: :mod:`~portable_rnn.engine.cells`, one time step of
each cell and its hand-written backward (the equations);
:mod:`~portable_rnn.engine.sequence`, the pass over time (hoisted projections,
tapes, masks, truncation, checkpointed segments) on which every face is built;
:mod:`~portable_rnn.engine.loop`, the time loop itself (a Python loop, or
``jax.lax.scan`` while JAX traces); :mod:`~portable_rnn.engine.kernels`, the
NumPy and CPU-torch kernels that the pass asks once, each registered for a
cell by name and proven equal to the portable path.
"""
