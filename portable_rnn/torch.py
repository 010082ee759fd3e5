r"""Drop-in ``torch.nn`` modules whose autograd backward is the hand-written BPTT.

:class:`RNN`, :class:`LSTM` and :class:`GRU` are ``torch.nn.RNNBase``
subclasses built by ``RNNBase``'s own constructor: the same arguments, checks,
defaults, parameter names and initial numbers (a ``torch.nn`` ``state_dict``
loads with ``strict=True`` both ways), ``all_weights``, ``_flat_weights`` (so
``weight_norm``, ``spectral_norm``, ``torch.nn.utils.parametrize`` and
``torch.func.functional_call`` reach the forward), ``flatten_parameters`` and
``torch.nn``'s forward contract, argument checks and messages: ``(input, hx)``
to ``(output, h_n)`` (``(output, (h_n, c_n))`` for LSTM), 2-D unbatched input
and ``PackedSequence`` in and out. Only the computation differs: one
:class:`torch.autograd.Function` runs :meth:`portable_rnn.LSTM.forward` (on
CPU, the NumPy fast path) and its hand-written :meth:`~portable_rnn.LSTM.backward`::

    from portable_rnn.torch import LSTM

    model = LSTM(16, 64, num_layers=2, batch_first=True, dropout=0.1, proj_size=32)
    out, (h_n, c_n) = model(x)
    out.sum().backward()

What autograd sees is what ``torch.nn`` gives it:

* The tape and the inputs are saved with ``save_for_backward``: changing the
  input, ``hx`` or a weight in place before ``backward()`` raises autograd's
  "modified by an inplace operation" error, and a second ``backward()``
  without ``retain_graph=True`` raises. ``output`` and the final state own
  their memory (in-place ops on them are allowed), and so does every gradient.
* Asked for a graph of the backward (``create_graph=True``, ``gradgradcheck``),
  the backward recomputes the forward on the portable path under autograd
  and runs the hand-written backward there: it is Array API code on torch
  tensors, so autograd differentiates it (double backward).
* Under ``torch.func`` (``grad``, ``vmap``, ``jacrev``, ``functional_call``)
  the same portable code runs on the transforms' tensors (the vmap rule is
  generated from it); the forward keeps no tape there and the backward
  recomputes it. The batched gradients of ``is_grads_batched=True`` run
  under torch's first vmap, which has no rule for the indexing the
  hand-written backward uses: those come from autograd through the portable
  forward (the same maths).
* ``proj_size`` (LSTM) runs on the portable path: the CPU fast path has no
  kernels for projections.
* ``torch.compile`` runs the modules with a graph break at the layer (their
  forward is ``torch.compiler.disable``-d): it leaves torch for NumPy, which
  Dynamo cannot trace.

Dropout is read at every forward, in [0, 1] as ``torch.nn``: in training mode
every layer's output but the last's is multiplied by factors drawn from
torch's generator, ``torch.empty(...).bernoulli_(1 - p) / (1 - p)`` over the
time-major (T, N, dirs*R) output (zeros for ``p = 1``), and the backward
applies the same factors. For padded or unbatched input these are the numbers
``torch.nn`` draws after the same ``torch.manual_seed`` (on CPU); for a
``PackedSequence``, which ``torch.nn`` drops in its packed layout, they follow
the same law but are other numbers.

Half precision: a ``bfloat16`` or ``float16`` module computes in float32
inside; the output and final state come back in the module's dtype and
gradients in each parameter's dtype. Under ``torch.autocast`` the layer is
one float32 (or float64) computation that returns the module's dtype (the
input is cast to it).

Importing this module needs torch; the rest of the package does not.
"""

from __future__ import annotations

import functools

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence
from torch.utils._pytree import tree_flatten, tree_unflatten

from ._validation import check_probability
from .backends import functorch_wrapped
from .engine import kernels as engine_kernels
from .engine.cells import Cell, LSTMCell
from .engine.layer_norm import LayerNormGRUCell, LayerNormLSTMCell
from . import layers, minimal
from .layers import LAYERS

__all__ = ["RNN", "LSTM", "GRU", "Recurrent", "PeepholeLSTM", "LayerNormLSTM", "LayerNormGRU", "MinGRU", "MinLSTM"]

_HALF = (torch.float16, torch.bfloat16)


def _is_wrapped(tensor) -> bool:
    """Whether ``tensor`` is a transform's wrapper with no memory of its own (the fast path's test).

    ``torch.func``'s batched, grad-tracking and functional tensors, and the
    batched gradients of ``torch.autograd.grad(..., is_grads_batched=True)``.
    """
    return functorch_wrapped()(tensor)


def _is_legacy_batched(tensor) -> bool:
    """Whether ``tensor`` is batched by torch's first ``vmap`` (``is_grads_batched``)."""
    return torch._C._functorch.is_legacy_batchedtensor(tensor)


def _bare(tensor):
    """``tensor`` outside autograd (the fast path takes no tensor that requires grad).

    A transform's tensor is returned as it is.
    """
    return tensor if _is_wrapped(tensor) else tensor.detach()


def _memory(tensor):
    """The byte range of ``tensor``'s storage, or ``None`` where it has none to look at."""
    if _is_wrapped(tensor) or tensor.device.type == "meta":
        return None
    storage = tensor.untyped_storage()
    start = storage.data_ptr()
    return (start, start + storage.nbytes()) if storage.nbytes() else None


def _own_memory(tensors, others=()):
    """``tensors`` with a copy of every one whose memory overlaps another's or one of ``others``.

    The fast path hands out views into its own buffers: two gradients over
    one storage (the bias gradients of a layer are one array) would be
    accumulated into each other, and an output over the tape's memory would
    change what the backward reads.
    """
    taken = [r for r in map(_memory, others) if r is not None]
    owned = []
    for t in tensors:
        span = None if t is None else _memory(t)
        if span is not None and any(span[0] < end and start < span[1] for start, end in taken):
            t = t.clone()
            span = _memory(t)
        if span is not None:
            taken.append(span)
        owned.append(t)
    return owned


class _TapeBox:
    """Carries the forward's tape, flattened, to ``setup_context`` (which sees only inputs and outputs).

    ``leaves`` and ``treedef`` are ``torch.utils._pytree.tree_flatten``'s
    (both ``None`` when the forward kept no tape).
    """

    __slots__ = ("leaves", "treedef")

    def __init__(self):
        self.leaves = self.treedef = None


class _HandWrittenBPTT(torch.autograd.Function):
    """``spec.forward`` with ``spec.backward`` as its gradient.

    Tensor arguments: ``x``, the state parts (none when ``hx`` is zeros), the
    training-mode factors (``n_masks``: how many of dropout's, recurrent
    dropout's and zoneout's, :func:`_mask_keywords`), then the parameters in
    ``state_dict`` order.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(spec, lengths, n_state, n_masks, box, x, *tensors):
        parts, masks, weights = _split(tensors, n_state, n_masks)
        params = dict(zip(spec.param_shapes(), map(_bare, weights)))
        state = spec.state_value(tuple(map(_bare, parts))) if n_state else None
        out, final, tape = spec.forward(params, _bare(x), state, lengths,
                                        **_mask_keywords(tuple(map(_bare, masks)), n_masks))
        if out._is_view():
            # batch_first's permuted view. A custom Function's view output may not be
            # modified in place; torch.nn's output is a contiguous tensor of its own.
            out = out.clone(memory_format=torch.contiguous_format)
        outputs = (out, *spec.state_parts(final))
        if any(map(_is_wrapped, (x, *tensors))):
            return outputs  # under torch.func the backward recomputes the tape at its own level
        box.leaves, box.treedef = tree_flatten(tape)
        return tuple(_own_memory(outputs, others=[leaf for leaf in box.leaves if isinstance(leaf, torch.Tensor)]))

    @staticmethod
    def setup_context(ctx, inputs, output):
        spec, lengths, n_state, n_masks, box, x, *tensors = inputs
        ctx.spec, ctx.lengths, ctx.n_state, ctx.n_masks = spec, lengths, n_state, n_masks
        leaves, ctx.treedef = box.leaves or [], box.treedef
        box.leaves = box.treedef = None
        ctx.tensor_slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        ctx.constants = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        ctx.save_for_backward(x, *tensors, *(leaves[i] for i in ctx.tensor_slots))
        ctx.n_inputs = 1 + len(tensors)

    @staticmethod
    def backward(ctx, d_out, *d_finals):
        saved = ctx.saved_tensors  # raises on a second backward, or after an in-place change
        n_inputs = ctx.n_inputs
        x, tensors = saved[0], saved[1:n_inputs]
        parts, masks, weights = _split(tensors, ctx.n_state, ctx.n_masks)
        with torch.autocast(x.device.type, enabled=False):
            if any(map(_is_legacy_batched, (d_out, *d_finals))):
                d_inputs = _autograd_of_portable_forward(ctx, x, parts, masks, weights, (d_out, *d_finals))
            else:
                d_inputs = _hand_written_backward(ctx, x, parts, masks, weights, saved[n_inputs:],
                                                  d_out, d_finals)
        dx, d_parts, d_weights = d_inputs[0], d_inputs[1:1 + ctx.n_state], d_inputs[1 + ctx.n_state:]
        return (None, None, None, None, None, dx, *d_parts, *(None,) * sum(ctx.n_masks), *d_weights)


def _hand_written_backward(ctx, x, parts, masks, weights, tape_leaves, d_out, d_finals):
    """``[dx, *d_state_parts, *d_weights]`` from the hand-written BPTT.

    With the forward's tape when it kept one; else (under ``torch.func``) or
    when autograd records this backward (``create_graph=True``), after the
    portable forward, which the transforms and autograd trace.
    """
    spec = ctx.spec
    if ctx.treedef is None or torch.is_grad_enabled():
        params = dict(zip(spec.param_shapes(), weights))
        state = spec.state_value(parts) if ctx.n_state else None
        _, _, tape = spec.forward(params, x, state, ctx.lengths, **_mask_keywords(masks, ctx.n_masks))
    else:
        params = dict(zip(spec.param_shapes(), map(_bare, weights)))
        leaves = list(ctx.constants)
        for slot, leaf in zip(ctx.tensor_slots, tape_leaves):
            leaves[slot] = leaf
        tape = tree_unflatten(leaves, ctx.treedef)
    grads, dx, dstate0 = spec.backward(params, tape, d_out, spec.state_value(d_finals))
    d_parts = spec.state_parts(dstate0) if ctx.n_state else ()
    return _own_memory([dx, *d_parts, *(grads[k] for k in spec.param_shapes())])


def _autograd_of_portable_forward(ctx, x, parts, masks, weights, d_outputs):
    """``[dx, *d_state_parts, *d_weights]`` by autograd through the portable forward.

    For the batched gradients of ``torch.autograd.grad(..., is_grads_batched=True)``:
    torch runs them under its first ``vmap``, which has no rule for the basic
    indexing the hand-written backward is written with, but has one for every
    backward formula of the portable forward's operations (the same maths).
    """
    spec = ctx.spec
    inputs = [t.detach().requires_grad_(True) for t in (x, *parts, *weights)]
    x_, parts_, weights_ = inputs[0], inputs[1:1 + ctx.n_state], inputs[1 + ctx.n_state:]
    with torch.enable_grad(), engine_kernels.portable_only():
        state = spec.state_value(tuple(parts_)) if ctx.n_state else None
        out, final, _ = spec.forward(dict(zip(spec.param_shapes(), weights_)), x_, state, ctx.lengths,
                                     retain="none", **_mask_keywords(masks, ctx.n_masks))
        outputs = (out, *spec.state_parts(final))
        return list(torch.autograd.grad(outputs, inputs, d_outputs, allow_unused=True, materialize_grads=True))


def _split(tensors, n_state, n_masks):
    """``(state parts, training factors, weights)`` of :class:`_HandWrittenBPTT`'s tensor arguments."""
    end = n_state + sum(n_masks)
    return tensors[:n_state], tensors[n_state:end], tensors[end:]


def _mask_keywords(masks, n_masks) -> dict:
    """``spec.forward``'s keywords for the training factors ``masks``, counted ``(dropout, recurrent, zoneout)``."""
    n_dropout, n_recurrent, n_zoneout = n_masks
    keywords = {"dropout_masks": tuple(masks[:n_dropout])}
    if n_recurrent:
        keywords["recurrent_masks"] = masks[n_dropout]
    if n_zoneout:
        keywords["zoneout_masks"] = tuple(masks[n_dropout + n_recurrent:])
    return keywords


@functools.lru_cache(maxsize=64)
def _spec(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, options):
    """The engine's layer for a module's current settings (one per settings: its tapes are typed by it)."""
    return LAYERS[mode](input_size, hidden_size, num_layers, bidirectional=bidirectional,
                        batch_first=batch_first, bias=bias, dropout=dropout, **dict(options))


class _DropIn(torch.nn.RNNBase):
    """What :class:`RNN`, :class:`LSTM` and :class:`GRU` share: the forward."""

    def _engine(self, training_dropout):
        """The engine's layer for this module now (``dropout`` and the rest are read at every call)."""
        options: tuple[tuple[str, object], ...] = ()
        if self.mode == "LSTM" and self.proj_size:
            options = (("proj_size", self.proj_size),)
        elif self.mode in ("RNN_TANH", "RNN_RELU"):
            options = (("nonlinearity", "tanh" if self.mode == "RNN_TANH" else "relu"),)
        # The factors are drawn here; the engine only needs to know that some are
        # given, and its rate must be below 1 (its own draw divides by 1 - p).
        rate = 0.5 if training_dropout else 0.0
        mode = {"LSTM": "lstm", "GRU": "gru"}.get(self.mode, "rnn")
        return _spec(mode, self.input_size, self.hidden_size, self.num_layers, self.bias, self.batch_first,
                     rate, self.bidirectional, options)

    # Dynamo cannot trace a forward that leaves torch for NumPy: one graph break
    # here, instead of one per Python check inside (and minutes of compiling).
    @torch.compiler.disable
    def forward(self, input, hx=None):
        """``torch.nn``'s contract: see the module docstring."""
        self._update_flat_weights()
        name = {"LSTM": "LSTM", "GRU": "GRU"}.get(self.mode, "RNN")
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            parts = self._hx_parts(hx, batched=True)
            self._check_args(data, parts, batch_sizes)
            x, lengths = pad_packed_sequence(input, batch_first=self.batch_first)
            lengths = lengths.to(x.device)
            unbatched = False
        else:
            if input.dim() not in (2, 3):
                tensor = " tensor" if name == "RNN" else ""
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{tensor} instead")
            unbatched = input.dim() == 2
            x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
            parts = self._hx_parts(hx, batched=not unbatched)
            self._check_args(x, parts, None)
            lengths = None
        if x.shape[1 if self.batch_first else 0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

        out, finals = _run(self, x, parts, lengths)

        if packed:
            if sorted_indices is not None:
                out = out.index_select(0 if self.batch_first else 1, sorted_indices)
                lengths = lengths.index_select(0, sorted_indices)
            data = pack_padded_sequence(out, lengths.cpu(), batch_first=self.batch_first).data
            out = PackedSequence(data, batch_sizes, sorted_indices, unsorted_indices)
        elif unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
            finals = [f.squeeze(1) for f in finals]
        return out, (tuple(finals) if len(finals) > 1 else finals[0])

    def _hx_parts(self, hx, batched):
        """``hx`` as a tuple of (L*dirs, N, .) tensors, or ``None``; ``torch.nn``'s checks of its rank."""
        if hx is None:
            return None
        if self.mode == "LSTM":
            h, c = hx
            if batched and (h.dim() != 3 or c.dim() != 3):
                raise RuntimeError("For batched 3-D input, hx and cx should also be 3-D but got "
                                   f"({h.dim()}-D, {c.dim()}-D) tensors")
            if not batched:
                if h.dim() != 2 or c.dim() != 2:
                    raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D but got "
                                       f"({h.dim()}-D, {c.dim()}-D) tensors")
                h, c = h.unsqueeze(1), c.unsqueeze(1)
            return (h, c)
        if batched and hx.dim() != 3:
            raise RuntimeError(f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        if not batched:
            if hx.dim() != 2:
                raise RuntimeError(f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor")
            hx = hx.unsqueeze(1)
        return (hx,)

    def _check_args(self, x, parts, batch_sizes):
        """``torch.nn``'s own checks of the input and state (its methods, its messages)."""
        if parts is None:
            self.check_input(x, batch_sizes)
        elif self.mode == "LSTM":
            torch.nn.LSTM.check_forward_args(self, x, parts, batch_sizes)
        else:
            self.check_forward_args(x, parts[0], batch_sizes)

def _run(module, x, parts, lengths):
    """Output and final state parts of ``module`` on the padded, batched ``x``: casts, dropout, the autograd function."""
    weights = module._flat_weights
    dtype = weights[0].dtype
    inside = torch.float32 if dtype in _HALF else dtype
    if inside != dtype or x.dtype != inside:  # x's may differ under autocast (check_input allows it)
        x = x.to(inside)
        weights = [w.to(inside) for w in weights]
        parts = None if parts is None else tuple(p.to(inside) for p in parts)
    masks = _dropout_masks(module, x)
    weights = _weight_dropped(module, weights)
    spec = module._engine(bool(masks))
    recurrent, zoneout = _recurrent_factors(module, spec, x)
    n_state = 0 if parts is None else len(parts)
    with torch.autocast(x.device.type, enabled=False):
        out, *finals = _HandWrittenBPTT.apply(spec, lengths, n_state, (len(masks), len(recurrent), len(zoneout)),
                                              _TapeBox(), x, *(parts or ()), *masks, *recurrent, *zoneout, *weights)
    if out.dtype != dtype:
        out, finals = out.to(dtype), [f.to(dtype) for f in finals]
    return out, finals

def _weight_dropped(module, weights):
    """``weights`` with every ``weight_hh`` times fresh DropConnect factors, for a module in training
    with ``weight_drop > 0`` (a torch product, so autograd differentiates through it)."""
    p = getattr(module, "weight_drop", 0.0)
    if not (module.training and p > 0):
        return weights
    names = module._engine(False).param_shapes()
    return [w * torch.empty_like(w).bernoulli_(1.0 - p).div_(1.0 - p) if name.startswith("weight_hh_") else w
            for name, w in zip(names, weights)]


def _recurrent_factors(module, spec, x):
    """In training mode, recurrent dropout's factor ``(m,)`` and zoneout's, one per state, from torch's generator.

    ``()`` for each the module does not apply (see :meth:`portable_rnn.layers.LSTM.forward`).
    """
    if not module.training:
        return (), ()
    T, N = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
    LD = module.num_layers * (2 if module.bidirectional else 1)
    recurrent: tuple = ()
    zoneout: tuple = ()
    p = getattr(module, "recurrent_dropout", 0.0)
    if p > 0:
        shape = (LD, N, spec.output_size)
        recurrent = (torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p).div_(1.0 - p),)
    p = getattr(module, "zoneout", 0.0)
    if p > 0:
        zoneout = tuple(torch.empty((LD, T, N, size), dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
                        for size in spec._state_sizes())
    return recurrent, zoneout


def _dropout_masks(module, x):
    """In training mode, the dropout factors of every layer but the last, from torch's generator.

    Drawn time-major, (T, N, dirs*R) like the layer outputs ``torch.nn``
    drops, then laid out like ``x``'s batch_first.
    """
    p = module.dropout
    if not (module.training and p > 0 and module.num_layers > 1):
        return ()
    T, N = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
    shape = (T, N, (2 if module.bidirectional else 1) * (getattr(module, "proj_size", 0) or module.hidden_size))
    if p == 1:
        masks = [torch.zeros(shape, dtype=x.dtype, device=x.device) for _ in range(module.num_layers - 1)]
    else:
        keep = 1.0 - p
        masks = [torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep).div_(keep)
                 for _ in range(module.num_layers - 1)]
    return tuple(m.transpose(0, 1) if module.batch_first else m for m in masks)


class RNN(_DropIn):
    """``torch.nn.RNN`` with the hand-written backward: ``RNN(input_size, hidden_size, num_layers=1,
    nonlinearity='tanh', bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None,
    dtype=None)``."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        modes = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}
        if self.nonlinearity not in modes:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(modes[self.nonlinearity], *args, **kwargs)


class LSTM(_DropIn):
    """``torch.nn.LSTM`` with the hand-written backward: ``LSTM(input_size, hidden_size, num_layers=1,
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None,
    dtype=None)``."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)

    get_expected_cell_size = torch.nn.LSTM.get_expected_cell_size
    permute_hidden = torch.nn.LSTM.permute_hidden


class GRU(_DropIn):
    """``torch.nn.GRU`` with the hand-written backward (same signature)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


@functools.lru_cache(maxsize=64)
def _cell_spec(cell, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
               learn_initial_state, recurrent_dropout=0.0, zoneout=0.0):
    """The engine's :class:`~portable_rnn.layers.Recurrent` for a module's current settings (one per settings)."""
    return layers.Recurrent(input_size, hidden_size, num_layers, cell=cell, bidirectional=bidirectional,
                            batch_first=batch_first, bias=bias, dropout=dropout,
                            learn_initial_state=learn_initial_state, recurrent_dropout=recurrent_dropout,
                            zoneout=zoneout)


class Recurrent(torch.nn.Module):
    r"""A layer of any cell (:class:`~portable_rnn.engine.cells.Cell`, your own included) as a torch module.

    ``Recurrent(cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, learn_initial_state=False,
    weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0)``: the arguments and parameters of
    the drop-in modules (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``, ...,
    :math:`U(-1/\sqrt H, 1/\sqrt H)` as ``torch.nn``), with the cell's hand-written BPTT as the
    autograd backward. ``forward(input, hx=None)`` takes (T, N, D), (N, T, D) with
    ``batch_first``, or an unbatched (T, D), and ``hx`` as one tensor (L*dirs, N, H) for a cell
    with one state or a tuple with one per state; it returns ``(output, h_n)``, or
    ``(output, (h_n, c_n, ...))``. Dropout between layers is drawn from torch's generator in
    training mode. With ``learn_initial_state=True`` the initial state is a parameter
    (``initial_h``, ``initial_c``, ..., (L*dirs, H) each, starting at zero) and ``hx`` is not taken.
    ``weight_drop=p`` is DropConnect on every ``weight_hh`` in training mode (AWD-LSTM's weight
    drop): each forward multiplies them by factors from torch's generator, 0 with probability p and
    1/(1-p) otherwise, before the hand-written BPTT, so autograd carries their gradients through
    the product. ``recurrent_dropout=p`` (variational dropout of :math:`h_{t-1}` in the recurrent
    product, one draw per sequence) and ``zoneout=p`` (each unit of each state keeps its previous
    value with probability p at each step; the expectation in evaluation mode) draw their factors
    from torch's generator in training mode and hand them to the hand-written BPTT
    (:meth:`portable_rnn.layers.LSTM.forward`).
    """

    def __init__(self, cell, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, learn_initial_state=False,
                 weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0):
        super().__init__()
        self.weight_drop = check_probability("weight_drop", weight_drop)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        self.zoneout = check_probability("zoneout", zoneout)
        self.learn_initial_state = learn_initial_state
        self.cell, self.input_size, self.hidden_size, self.num_layers = cell, input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = float(dropout)
        for name, shape in self._engine(False).param_shapes().items():
            self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self):
        """:math:`U(-1/\\sqrt H, 1/\\sqrt H)`, but zeros for ``initial_*`` and the cell's ``fixed_init`` constants."""
        bound = self.hidden_size ** -0.5
        stems = {name: stem for stem in self.cell.fixed_init
                 for name in self._engine(False).param_shapes() if name.rpartition("_l")[0] == stem}
        for name, weight in self.named_parameters():
            if name.startswith("initial_"):
                torch.nn.init.zeros_(weight)
            elif name in stems:
                torch.nn.init.constant_(weight, self.cell.fixed_init[stems[name]])
            else:
                torch.nn.init.uniform_(weight, -bound, bound)

    def _engine(self, training_dropout):
        rate = 0.5 if training_dropout else 0.0  # the factors are drawn by _dropout_masks
        return _cell_spec(self.cell, self.input_size, self.hidden_size, self.num_layers, self.bias,
                          self.batch_first, rate, self.bidirectional, self.learn_initial_state,
                          self.recurrent_dropout, self.zoneout)

    @property
    def _flat_weights(self):
        return [getattr(self, name) for name in self._engine(False).param_shapes()]

    def extra_repr(self):
        return (f"{self.cell!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bias={self.bias}, batch_first={self.batch_first}, dropout={self.dropout}, "
                f"bidirectional={self.bidirectional}"
                + "".join(f", {name}={getattr(self, name)}" for name in ("weight_drop", "recurrent_dropout", "zoneout")
                          if getattr(self, name)))

    @torch.compiler.disable
    def forward(self, input, hx=None):
        if input.dim() not in (2, 3):
            raise ValueError(f"Recurrent: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        unbatched = input.dim() == 2
        x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
        parts = None
        if hx is not None:
            parts = self._engine(False).state_parts(hx, name="hx")
            parts = tuple(p.unsqueeze(1) for p in parts) if unbatched else parts
        out, finals = _run(self, x, parts, None)
        if unbatched:
            out, finals = out.squeeze(0 if self.batch_first else 1), [f.squeeze(1) for f in finals]
        return out, (tuple(finals) if len(finals) > 1 else finals[0])


class _CellModule(Recurrent):
    """A :class:`Recurrent` of one built-in cell, ``_cell``, with ``torch.nn``'s arguments (the variant classes)."""

    _cell: Cell

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None, learn_initial_state=False,
                 weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0):
        super().__init__(self._cell, input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, device, dtype, learn_initial_state, weight_drop, recurrent_dropout,
                         zoneout)


class PeepholeLSTM(_CellModule):
    r"""An LSTM with peephole connections (Gers & Schmidhuber 2000) as a torch module.

    ``PeepholeLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, learn_initial_state=False,
    weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0)``:
    ``torch.nn.LSTM``'s arguments and parameters (no ``proj_size``) plus ``weight_ci_l{k}``,
    ``weight_cf_l{k}`` and ``weight_co_l{k}`` (H,), through which the input and forget gates
    see :math:`c_{t-1}` and the output gate sees :math:`c_t`; the hand-written BPTT of
    :class:`~portable_rnn.engine.cells.LSTMCell` with ``peephole=True`` is its autograd backward.
    """

    _cell = LSTMCell(peephole=True)


class LayerNormLSTM(_CellModule):
    r"""A layer-normalised LSTM (Ba, Kiros & Hinton 2016) as a torch module.

    ``LayerNormLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, learn_initial_state=False,
    weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0)``: ``torch.nn.LSTM``'s arguments and
    parameters (no ``proj_size``) plus the
    gains ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` (4H,) and ``weight_ln_c_l{k}`` (H,),
    starting at 1, and biases ``bias_ln_ih_l{k}``, ``bias_ln_hh_l{k}``, ``bias_ln_c_l{k}``,
    starting at 0, of the normalisations of the input and recurrent gate pre-activations and of
    the cell state; :class:`~portable_rnn.engine.layer_norm.LayerNormLSTMCell` gives its
    equations and, hand-written, its autograd backward.
    """

    _cell = LayerNormLSTMCell()


class LayerNormGRU(_CellModule):
    r"""A layer-normalised GRU (Ba, Kiros & Hinton 2016 on ``torch.nn.GRU``'s equations) as a torch module.

    ``LayerNormGRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, device=None, dtype=None, learn_initial_state=False,
    weight_drop=0.0, recurrent_dropout=0.0, zoneout=0.0)``: ``torch.nn.GRU``'s arguments and
    parameters plus the gains
    ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` (3H,), starting at 1, and biases
    ``bias_ln_ih_l{k}``, ``bias_ln_hh_l{k}``, starting at 0;
    :class:`~portable_rnn.engine.layer_norm.LayerNormGRUCell` gives its equations and backward.
    """

    _cell = LayerNormGRUCell()


@functools.lru_cache(maxsize=64)
def _minimal_spec(spec_class, input_size, hidden_size, num_layers, bias, batch_first, bidirectional, scan):
    """The :mod:`portable_rnn.minimal` layer for a module's current settings (one per settings)."""
    return spec_class(input_size, hidden_size, num_layers, bias=bias, batch_first=batch_first,
                      bidirectional=bidirectional, scan=scan)


class _MinimalModule(torch.nn.Module):
    r"""What :class:`MinGRU` and :class:`MinLSTM` share: parameters, checks and the forward.

    The computation is :func:`_run`'s, as for the drop-ins: one :class:`_HandWrittenBPTT`
    whose forward is the spec's :meth:`~portable_rnn.minimal.MinGRU.forward` and whose
    backward is the spec's hand-written :meth:`~portable_rnn.minimal.MinGRU.backward`.
    """

    _spec_class: type  # minimal.MinGRU or minimal.MinLSTM, set by the subclass
    #: No dropout between layers (:func:`_dropout_masks` reads it).
    dropout = 0.0

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, bidirectional=False,
                 device=None, dtype=None, scan="parallel"):
        super().__init__()
        # the spec checks the arguments, each by name (ValueError: sizes, flags, scan)
        spec = _minimal_spec(self._spec_class, input_size, hidden_size, num_layers, bias, batch_first,
                             bidirectional, scan)
        self.input_size, self.hidden_size, self.num_layers = spec.input_size, spec.hidden_size, spec.num_layers
        self.bias, self.batch_first, self.bidirectional, self.scan = bias, batch_first, bidirectional, scan
        for name, shape in spec.param_shapes().items():
            self.register_parameter(name, torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self):
        r"""Every weight and bias from :math:`U(-1/\sqrt H, 1/\sqrt H)`, as ``torch.nn``'s recurrent layers."""
        bound = self.hidden_size ** -0.5
        for weight in self.parameters():
            torch.nn.init.uniform_(weight, -bound, bound)

    def _engine(self, training_dropout):
        return _minimal_spec(self._spec_class, self.input_size, self.hidden_size, self.num_layers, self.bias,
                             self.batch_first, self.bidirectional, self.scan)

    @property
    def _flat_weights(self):
        return [getattr(self, name) for name in self._engine(False).param_shapes()]

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
                f"batch_first={self.batch_first}, bidirectional={self.bidirectional}, scan={self.scan!r}")

    @torch.compiler.disable
    def forward(self, input, hx=None):
        """``(output, h_n)`` of ``input`` (T, N, D), (N, T, D) with ``batch_first``, or unbatched (T, D)."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            raise TypeError(f"{name} takes a padded tensor as input, not a PackedSequence "
                            "(pad it with torch.nn.utils.rnn.pad_packed_sequence)")
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        dtype = self._flat_weights[0].dtype
        if input.dtype != dtype and not torch.is_autocast_enabled(input.device.type):
            raise ValueError(f"input must have the type {dtype}, got type {input.dtype}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input has {input.shape[-1]} features on its last axis; expected "
                             f"input_size = {self.input_size}")
        unbatched = input.dim() == 2
        x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
        if x.shape[1 if self.batch_first else 0] == 0:
            raise ValueError(f"input has no time steps; {name} needs at least one")
        parts = None if hx is None else (self._check_hx(hx, x, unbatched),)
        out, finals = _run(self, x, parts, None)
        (h_n,) = finals
        if unbatched:
            out, h_n = out.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
        return out, h_n

    def _check_hx(self, hx, x, unbatched):
        """``hx`` as a batched (L*dirs, N, H) tensor, after checking its type, shape, dtype and device."""
        (h,) = self._engine(False).state_parts(hx, name="hx")
        if not isinstance(h, torch.Tensor):
            raise TypeError(f"hx must be a torch.Tensor or None, got {type(h).__name__}")
        LD, H = self.num_layers * (2 if self.bidirectional else 1), self.hidden_size
        N = x.shape[0 if self.batch_first else 1]
        expected = (LD, H) if unbatched else (LD, N, H)
        if tuple(h.shape) != expected:
            layout = "(num_layers * dirs, H)" if unbatched else "(num_layers * dirs, N, H)"
            raise ValueError(f"hx has shape {tuple(h.shape)}; expected {layout} = {expected}")
        if h.dtype != x.dtype:
            raise ValueError(f"hx has dtype {h.dtype}; expected the input's, {x.dtype}")
        if h.device != x.device:
            raise ValueError(f"hx is on {h.device}; expected the input's device, {x.device}")
        return h.unsqueeze(1) if unbatched else h


class MinGRU(_MinimalModule):
    r"""The minimal GRU (:class:`portable_rnn.minimal.MinGRU`) as a torch module.

    ``MinGRU(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    bidirectional=False, device=None, dtype=None, scan="parallel")``: ``torch.nn.GRU``'s
    arguments (no dropout), parameters named as the spec names them (``weight_ih_l{k}``
    (2H, D_k), stacking :math:`[W_z; W_h]`, and ``bias_ih_l{k}`` (2H,), with ``_reverse``
    for the reverse direction; no recurrent weights), drawn from
    :math:`U(-1/\sqrt H, 1/\sqrt H)` as ``torch.nn``. ``forward(input, hx=None)`` takes
    (T, N, D), (N, T, D) with ``batch_first``, or an unbatched (T, D), and ``hx``
    (L*dirs, N, H) (or (L*dirs, H)), and returns ``(output, h_n)``. The autograd backward
    is the spec's hand-written one; ``scan`` picks the parallel or the sequential scan.
    """

    _spec_class = minimal.MinGRU


class MinLSTM(_MinimalModule):
    r"""The minimal LSTM (:class:`portable_rnn.minimal.MinLSTM`) as a torch module.

    ``MinLSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    bidirectional=False, device=None, dtype=None, scan="parallel")``: as :class:`MinGRU`,
    with ``weight_ih_l{k}`` (3H, D_k) stacking :math:`[W_f; W_i; W_h]` and ``bias_ih_l{k}``
    (3H,). The state is h alone: ``forward(input, hx=None)`` returns ``(output, h_n)``,
    not an LSTM's ``(h_n, c_n)``.
    """

    _spec_class = minimal.MinLSTM
