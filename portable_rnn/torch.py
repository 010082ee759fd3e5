r"""Drop-in ``torch.nn`` modules whose autograd backward is the hand-written BPTT.

:class:`RNN`, :class:`LSTM` and :class:`GRU` take ``torch.nn``'s constructor
arguments and defaults, register the same parameters under the same names
(a ``torch.nn`` ``state_dict`` loads with ``strict=True`` both ways), draw the
same initial numbers from torch's generator, and keep ``torch.nn``'s forward
contract: ``(input, hx)`` to ``(output, h_n)`` (``(output, (h_n, c_n))`` for
LSTM), 2-D unbatched input, and ``PackedSequence`` in and out. Gradients reach
the parameters, the input and ``hx`` through a ``torch.autograd.Function``
whose backward is :meth:`portable_rnn.LSTM.backward` (on CPU, the NumPy fast
path), so ``torch.optim``, LR schedulers, gradient hooks and
``DistributedDataParallel`` work unchanged::

    from portable_rnn.torch import LSTM

    model = LSTM(16, 64, num_layers=2, batch_first=True, dropout=0.1, proj_size=32)
    out, (h_n, c_n) = model(x)
    out.sum().backward()

``dropout`` works as in ``torch.nn``: in training mode (``model.train()``,
the default) every layer's output but the last's is multiplied by factors
drawn from torch's generator, ``torch.empty(...).bernoulli_(1 - p) / (1 - p)``
over the time-major (T, N, dirs*R) output, and the backward applies the same
factors; in eval mode there is none. For padded or unbatched input these are
the numbers ``torch.nn`` draws after the same ``torch.manual_seed`` (on CPU,
checked against torch 2.13); for a ``PackedSequence``, which ``torch.nn``
drops in its packed layout, they follow the same law but are other numbers.
``dropout`` must be below 1 (``torch.nn`` also takes 1). ``proj_size`` (LSTM)
adds ``weight_hr_l{k}`` and makes h ``proj_size`` wide, as ``torch.nn.LSTM``;
projections run on the portable path (the CPU fast path has no kernels for them).
The backward is not itself differentiable: ``create_graph=True`` (double
backward) raises a ``RuntimeError`` that says so. Importing this module needs
torch; the rest of the package does not.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .layers import LAYERS

__all__ = ["RNN", "LSTM", "GRU"]


class _HandWrittenBPTT(torch.autograd.Function):
    """``spec.forward`` with ``spec.backward`` as its gradient (parameters passed flat, in state_dict order)."""

    @staticmethod
    def forward(ctx, spec, lengths, has_state, n_state_parts, n_masks, *tensors):
        state_parts, masks = tensors[:n_state_parts], tensors[n_state_parts:n_state_parts + n_masks]
        x, *flat = tensors[n_state_parts + n_masks:]
        # Detached views: the fast path takes tensors that do not require grad.
        params = {k: p.detach() for k, p in zip(spec.param_shapes(), flat)}
        state = None
        if has_state:
            state = spec.state_value(tuple(s.detach() for s in state_parts))
        out, final, tape = spec.forward(params, x.detach(), state, lengths, dropout_masks=masks)
        ctx.spec, ctx.params, ctx.tape, ctx.has_state = spec, params, tape, has_state
        ctx.n_state_parts, ctx.n_masks = n_state_parts, n_masks
        return (out, *spec.state_parts(final))

    @staticmethod
    def backward(ctx, d_out, *d_finals):
        if torch.is_grad_enabled():  # create_graph=True: a graph of this backward is asked for
            raise RuntimeError(
                "portable_rnn.torch: the hand-written backward is not itself differentiable; "
                "double backward (create_graph=True) is not supported"
            )
        spec = ctx.spec
        grads, dx, dstate0 = spec.backward(ctx.params, ctx.tape, d_out, spec.state_value(d_finals))
        d_state = spec.state_parts(dstate0) if ctx.has_state else (None,) * ctx.n_state_parts
        d_masks = (None,) * ctx.n_masks  # the dropout factors are constants
        return (None, None, None, None, None, *d_state, *d_masks, dx, *(grads[k] for k in spec.param_shapes()))


class _Recurrent(torch.nn.Module):
    """What :class:`RNN`, :class:`LSTM` and :class:`GRU` share (``torch.nn.RNNBase``'s role)."""

    mode = ""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None, **options):
        super().__init__()
        if proj_size:
            options["proj_size"] = proj_size
        self.spec = LAYERS[self.mode](input_size, hidden_size, num_layers, bidirectional=bidirectional,
                                      batch_first=batch_first, bias=bias, dropout=dropout, **options)
        if dropout > 0 and num_layers == 1:
            warnings.warn(  # torch.nn's warning, word for word
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout, self.proj_size = float(dropout), proj_size
        for name, shape in self.spec.param_shapes().items():
            self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``torch.nn``'s initialisation: every parameter from U(-1/sqrt(H), 1/sqrt(H)), in order."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self) -> str:
        return repr(self.spec)

    def forward(self, input, hx=None):
        """``torch.nn``'s contract: see the module docstring."""
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            input, lengths = pad_packed_sequence(input, batch_first=self.batch_first)
            lengths = lengths.to(input.device)
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1 if not self.batch_first else 0)
        parts = self._state_parts(hx, unbatched)
        n_parts = self.spec.cell.n_states
        tensors = parts if parts is not None else (None,) * n_parts
        masks = self._dropout_masks(input)
        out, *finals = _HandWrittenBPTT.apply(self.spec, lengths, parts is not None, n_parts, len(masks),
                                              *tensors, *masks, input, *self.parameters())
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
            finals = [f.squeeze(1) for f in finals]
        if packed:
            out = pack_padded_sequence(out, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=False)
        return out, self.spec.state_value(finals)

    def _dropout_masks(self, input):
        """In training mode, the dropout factors of every layer but the last, from torch's generator.

        Drawn time-major, (T, N, dirs*R) like the layer outputs ``torch.nn``
        drops, then laid out like ``input``'s batch_first.
        """
        spec = self.spec
        if not (self.training and spec.dropout > 0 and spec.num_layers > 1):
            return ()
        T, N = (input.shape[1], input.shape[0]) if self.batch_first else (input.shape[0], input.shape[1])
        shape = (T, N, spec.num_directions * spec.output_size)
        keep = 1.0 - spec.dropout
        masks = [torch.empty(shape, dtype=input.dtype, device=input.device).bernoulli_(keep).div_(keep)
                 for _ in range(spec.num_layers - 1)]
        return tuple(m.transpose(0, 1) if self.batch_first else m for m in masks)

    def _state_parts(self, hx, unbatched):
        if hx is None:
            return None
        parts = self.spec.state_parts(hx, "hx")
        return tuple(p.unsqueeze(1) for p in parts) if unbatched else parts


class RNN(_Recurrent):
    """``torch.nn.RNN`` with the hand-written backward: ``RNN(input_size, hidden_size, num_layers=1,
    nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None,
    dtype=None)``."""

    mode = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype, nonlinearity=nonlinearity)
        self.nonlinearity = nonlinearity


class LSTM(_Recurrent):
    """``torch.nn.LSTM`` with the hand-written backward: ``LSTM(input_size, hidden_size, num_layers=1,
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
    dtype=None)``."""

    mode = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device=device, dtype=dtype)


class GRU(_Recurrent):
    """``torch.nn.GRU`` with the hand-written backward (same signature)."""

    mode = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)
