"""``portable-rnn bench``: forward + backward of one recurrent layer against torch.nn, jax.grad and the GEMM bound.

``portable-rnn bench`` (or ``python -m portable_rnn.app.bench``) times
``loss = sum(outputs)`` -> gradients of one time-major, unidirectional layer
(the public :class:`~portable_rnn.layers.RNN`, :class:`~portable_rnn.layers.LSTM`
and :class:`~portable_rnn.layers.GRU`) on every backend that works here,
against references in the same process, and prints a table per case (and
writes JSON with ``--json``).

Contenders named after a backend (``numpy``, ``jax``, ``torch``,
``torch:cuda``, ``cupy``, ``jax:gpu``) are this package's layer on that
backend; JAX runs under ``jax.jit`` (forward and backward in one compiled
function, compiled before timing; the compile time is reported). The same
hand-written backward also runs from inside the frameworks' own
differentiation: ``jax.apply`` (``jax.value_and_grad`` through
:func:`portable_rnn.jax.apply`) and ``torch.module``
(:mod:`portable_rnn.torch`'s modules through autograd), timed in the same
rounds as ``jax.grad`` and ``torch.nn``. On a CUDA
machine the GPU contenders are compared with ``torch.nn`` on CUDA (cuDNN) and
synchronised after every run.

Modules: :mod:`.cases` (configurations and inputs), :mod:`.contenders` (our
layer per backend), :mod:`.references` (torch.nn, jax.grad, GEMM bound),
:mod:`.timing` (threads, rounds, settling), :mod:`.memory` (peak memory),
:mod:`.machine` (CPU, BLAS, SIMD facts), :mod:`.targets` (the ratios aimed
for) and :mod:`.run` (the table and the JSON report). ``--long`` is a bench
of its own, :mod:`.long`: peak memory and time of an LSTM layer at T up to
100,000 for the tapes ``full``, ``checkpoint`` and ``none``, against
``torch.nn`` and ``jax.grad`` with and without ``jax.checkpoint``, each in a
fresh process.
"""
