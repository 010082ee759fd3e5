r"""Import and export of recurrent-layer weights: PyTorch, Keras 3, Flax and the course layouts.

Every importer returns ``(spec, params)``: a :mod:`portable_rnn.layers` spec
(:class:`~portable_rnn.layers.RNN`, :class:`~portable_rnn.layers.LSTM` or
:class:`~portable_rnn.layers.GRU`) and a dict with PyTorch's ``state_dict``
names, shapes and gate orders, such that ``spec.forward(params, x)`` computes
what the source computes. Every exporter takes ``(spec, params)`` back.

One module per format:

:mod:`portable_rnn.interop.torch`
    ``torch.nn.RNN/LSTM/GRU`` (:func:`from_torch`, :func:`to_torch`): the
    ``state_dict`` is ours, same names, shapes and gate orders.
:mod:`portable_rnn.interop.keras`
    Keras 3 ``SimpleRNN/LSTM/GRU`` and ``Bidirectional`` (:func:`from_keras`,
    :func:`to_keras`): ``kernel`` (D, G*H) multiplies from the right,
    ``weight_ih = kernel.T``; gate order LSTM i, f, c, o (= ours), GRU z, r, h
    (ours r, z, n).
:mod:`portable_rnn.interop.flax`
    Flax linen cells (:func:`from_flax`, :func:`to_flax`,
    :func:`flax_carry_to_state`, :func:`state_to_flax_carry`): one ``Dense``
    per gate, ``kernel`` (in, H); gate order LSTM i, f, g, o, GRU r, z, n.
:mod:`portable_rnn.interop.courses`
    deeplearning.ai "RNN step by step" (:func:`from_stepbystep`,
    :func:`to_stepbystep`) and CS231n (:func:`from_cs231n`,
    :func:`to_cs231n`); its layout maps are also the ones
    :mod:`portable_rnn.stepbystep` and :mod:`portable_rnn.cs231n` run on.

Nothing is guessed: an importer checks the type, configuration, parameter
names and shapes of what it gets and raises ``TypeError``/``ValueError``
naming the part that does not fit, in particular for configurations whose
equations differ from ours (Keras activations
other than tanh/sigmoid, Keras without LSTM projections, ...).

Biases. Where a source has one bias per gate (Keras LSTM and SimpleRNN,
Flax ``SimpleCell``, both course layouts) it becomes ``bias_ih`` and
``bias_hh`` is zero; Flax's LSTM cells keep their bias on the hidden
``Dense``, so it becomes ``bias_hh`` and ``bias_ih`` is zero. Exporting to a
one-bias layout writes ``bias_ih + bias_hh``. Round trips
``to_X(*from_X(obj))`` and ``from_X(*to_X(spec, params))`` of parameters that
came from ``X`` are therefore exact, bit for bit (a bias of ``-0.0`` comes
back as ``+0.0``, the only value that changes).

Arrays. :func:`from_torch`, :func:`from_keras` and :func:`from_flax` copy the
weights to the host (:func:`portable_rnn.backends.to_host`) and build the
target arrays with explicit ``dtype`` and ``device``: by default NumPy arrays
of the source's dtype; ``like=x`` takes namespace, dtype and device from
``x``; ``xp=``, ``dtype=``, ``device=`` choose them explicitly, as in
:meth:`portable_rnn.layers.LSTM.init`. The course-layout converters stay in
the namespace, dtype and device of their inputs. No function writes into its
inputs, and every returned array is new: none shares memory with the
source's parameters.

The format modules are host-side tools: they use NumPy for the copies
between libraries, and import torch, Keras and Flax only when called.
"""

from __future__ import annotations

from .courses import from_cs231n, from_stepbystep, to_cs231n, to_stepbystep
from .flax import flax_carry_to_state, from_flax, state_to_flax_carry, to_flax
from .keras import from_keras, to_keras
from .torch import from_torch, to_torch

__all__ = [
    "from_torch",
    "to_torch",
    "from_keras",
    "to_keras",
    "from_flax",
    "to_flax",
    "flax_carry_to_state",
    "state_to_flax_carry",
    "from_stepbystep",
    "to_stepbystep",
    "from_cs231n",
    "to_cs231n",
]
