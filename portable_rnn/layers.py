r"""Stacked, optionally bidirectional RNN, LSTM and GRU layers with PyTorch's conventions.

A layer is a frozen (hashable) dataclass *spec*: it holds only sizes and
flags, never arrays. Parameters are a plain dict with the names, shapes and
gate order of ``torch.nn.RNN/LSTM/GRU``'s ``state_dict()``; the forward pass
returns a *tape* (a pytree of arrays) that the hand-written backward pass
consumes::

    spec = LSTM(input_size=5, hidden_size=4, num_layers=2, bidirectional=True)
    params = spec.init(seed=0, like=x)
    out, (h_n, c_n), tape = spec.forward(params, x, lengths=lengths)
    grads, dx, (dh0, dc0) = spec.backward(params, tape, d_out, (dh_n, dc_n))

    # training mode with dropout between layers: the same factors go into the tape
    spec = LSTM(5, 4, num_layers=2, dropout=0.2)
    masks = spec.dropout_masks(seed=1, x=x)
    out, state, tape = spec.forward(params, x, dropout_masks=masks)

Everything is backend-neutral (the namespace comes from the inputs) and
``jax.jit``-able: close over the spec or pass it as a static argument; params,
tapes and gradients are pytrees.

Layout, with ``L`` layers, ``dirs`` directions (2 if bidirectional), ``G``
gates (RNN 1, LSTM 4 ``i, f, g, o``, GRU 3 ``r, z, n``), hidden size ``H``
and ``R`` the size of h (``H``, or an LSTM's ``proj_size`` P when it is > 0):

- ``x`` (T, N, D), or (N, T, D) when ``batch_first``;
- ``out`` (T, N, dirs*R): the forward direction's outputs, then the reverse
  direction's, along the last axis (or (N, T, dirs*R));
- states (L*dirs, N, R), layer-major: index ``layer * dirs + direction``
  (an LSTM's c is (L*dirs, N, H));
- ``weight_ih_l{k}`` (G*H, D_k) with ``D_0 = D`` and ``D_k = dirs*R`` after,
  ``weight_hh_l{k}`` (G*H, R), ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (G*H,),
  with ``proj_size`` ``weight_hr_l{k}`` (P, H), with the suffix ``_reverse``
  for the reverse direction.

Layer ``k > 0`` reads the concatenation of both directions' outputs of layer
``k - 1``. Per layer and direction the maths is that of
:mod:`portable_rnn.engine.cells`, run by :mod:`portable_rnn.engine.sequence`.

Dropout (``dropout=p``, as ``torch.nn``): in training mode every layer's
output but the last's is multiplied by a factor that is 0 with probability
``p`` and :math:`1/(1-p)` otherwise, before the next layer reads it. The
factors are an input, ``forward(..., dropout_masks=...)``, shaped like
``out`` (one array per layer but the last), so that every backend runs the
same numbers and the backward applies the same factors to the gradients;
:meth:`~_LayerSpec.dropout_masks` draws them from a seed on the host,
:func:`portable_rnn.jax.apply` from a ``jax.random`` key and
:mod:`portable_rnn.torch` from torch's generator. Without them the layer
computes the evaluation mode (no dropout).

Weight drop (``weight_drop=p``, DropConnect on the recurrent weights as in
Merity et al.'s AWD-LSTM, 2017): in training mode each ``weight_hh`` is
multiplied by factors drawn the same way, one draw per forward pass, shared
by every step and sequence. They are an input too, ``forward(...,
weight_masks=...)``, a dict by ``weight_hh`` name (:meth:`~_LayerSpec.weight_drop_masks`
draws them from a seed, :func:`portable_rnn.jax.apply` from its key); the
tape keeps them, so the backward differentiates the weights actually used.

Recurrent dropout (``recurrent_dropout=p``, variational dropout of Gal &
Ghahramani 2016, Keras's name): in training mode :math:`h_{t-1}` is
multiplied by a factor where it enters the recurrent product, one draw per
sequence, layer and direction, shared by every step. The factors are
``forward(..., recurrent_masks=...)``, (L*dirs, N, R)
(:meth:`~_LayerSpec.recurrent_dropout_masks`).

Zoneout (``zoneout=p``, Krueger et al. 2016): in training mode each unit of
each state keeps its previous value with probability p at every step,
:math:`s_t = u_t \odot \tilde s_t + (1 - u_t) \odot s_{t-1}` with
:math:`u_t \in \{0, 1\}` from ``forward(..., zoneout_masks=...)``, one array
(L*dirs, T, N, F) per state, time-major in the order each direction runs
(:meth:`~_LayerSpec.zoneout_masks`); in evaluation mode (no masks) every
step blends with the expectation, :math:`u = 1 - p`. A state's gradient
crosses a zoned-out unit unchanged.

Variable lengths (right padding), as ``torch.nn.utils.rnn.pack_padded_sequence``:
with ``lengths`` (N,), step ``t`` of sequence ``n`` is valid when
``t < lengths[n]``. Outputs at padded steps are zero, the final state is the
state after the last valid step, and the reverse direction starts at each
sequence's own last valid step. It runs the forward engine on the sequences
reversed *within their lengths*,

.. math::

    \tilde x_{t,n} = x_{\pi_n(t),n}, \qquad
    \pi_n(t) = \begin{cases} \ell_n - 1 - t & t < \ell_n \\ t & t \ge \ell_n \end{cases}

(a gather with ``xp.take_along_axis``), and un-reverses its outputs with the
same map, since :math:`\pi_n` is its own inverse. Without lengths it is
``xp.flip`` on the time axis.
"""

from __future__ import annotations

import functools
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar, NamedTuple

from array_api_compat import device as device_of
from array_api_compat import is_jax_array

from . import init as _init
from .backends import resolve_target, to_namespace
from .engine import sequence
from ._validation import (
    check_bool,
    check_floating,
    check_int,
    check_real,
    check_retain,
    check_integer_dtype,
    check_params,
    check_probability,
    check_same_device,
    check_shape,
    check_time_steps,
    check_truncate,
    namespace_of,
    placement,
)
from .engine.cells import Cell, cell_for
from .engine.layer_norm import LAYER_NORM_CELLS

__all__ = ["RNN", "LSTM", "GRU", "Recurrent", "RecurrentTape", "LAYERS"]


class RecurrentTape(NamedTuple):
    """What :meth:`LSTM.backward` (and RNN's, GRU's) needs; a pytree of arrays.

    Attributes
    ----------
    layers : tuple of tuple of sequence.Tape or sequence.CheckpointTape
        ``layers[k][d]`` is the engine tape of layer ``k``, direction ``d``
        (the reverse direction's tape holds its time-reversed input).
    index : int array (T, N) or None
        The within-length time reversal :math:`\\pi` when lengths were given.
    dropout : tuple of arrays (T, N, dirs*R)
        The dropout factors applied to the output of every layer but the
        last, time-major; empty in evaluation mode.
    weight_masks : dict of str to array, or None
        The weight-drop factors of each ``weight_hh`` (training mode), else None.
    """

    layers: tuple
    index: object = None  # type: ignore[assignment]  # the field's name shadows tuple.index, as documented
    dropout: tuple = ()
    weight_masks: object = None

    #: The spec whose :meth:`~LSTM.forward` made the tape. It lives on a
    #: per-spec subclass, not in a field, so that the tape stays a pytree of
    #: arrays under ``jax.jit`` and still knows its maker.
    spec = None  # type: ignore[misc]  # a class attribute, not a field: see the comment above


@functools.lru_cache(maxsize=256)
def _tape_type(spec):
    """The :class:`RecurrentTape` subclass that remembers ``spec`` (one per spec)."""
    return type("RecurrentTape", (RecurrentTape,), {"__slots__": (), "spec": spec})


# --------------------------------------------------------------------------- helpers


def _is_traced(a) -> bool:
    """Whether ``a`` is a JAX tracer (inside jit/grad/vmap): its values are unknown."""
    if not is_jax_array(a):
        return False
    from jax.core import Tracer

    return isinstance(a, Tracer)


def _device_or_none(a):
    """The device of ``a``, or ``None`` (the default) where it is unknown, as for JAX tracers."""
    try:
        return device_of(a)
    except Exception:
        return None


def _length_maps(lengths, n_steps, dtype, dev, xp):
    """Mask (T, N, 1) of ``dtype`` and reversal index (T, N) from lengths (N,).

    ``mask[t, n] = 1`` if ``t < lengths[n]``; ``index[t, n] = lengths[n] - 1 - t``
    there and ``t`` on the padding. Built with array ops only (no host sync).
    """
    t = xp.arange(n_steps, device=dev)[:, None]  # default index dtype (int64 where torch needs it)
    ell = xp.astype(lengths, t.dtype)[None, :]
    valid = t < ell
    mask = xp.astype(valid, dtype)[..., None]
    index = xp.where(valid, ell - 1 - t, t)
    return mask, index


def _check_lengths(lengths, n_steps, batch, xp):
    """Integer lengths (N,) within [1, T]; the range only where the values are concrete.

    The range check is the one host read of a forward pass: one bool comes
    back from the device, a sync on a GPU. JAX tracers are not read (under
    ``jax.jit`` even a closed-over constant is a tracer here). Arrays that
    have no values at all (torch's ``meta`` and fake tensors, ``vmap``'s
    batched tensors) cannot be checked, and a ``TypeError`` says so.
    """
    check_integer_dtype(xp, "lengths", lengths, "valid steps per sequence")
    check_shape("lengths", lengths, (batch,), f"(N,) with N = {batch}, the batch of x")
    in_range = xp.all((lengths >= 1) & (lengths <= n_steps))
    if _is_traced(in_range):
        return
    try:
        ok = bool(in_range)  # the host read (a device sync)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TypeError(
            f"lengths cannot be read on the host ({reason}): forward() checks 1 <= lengths <= T "
            "there, one device sync. Pass lengths with values (any real device), or "
            "lengths=None for full-length sequences"
        ) from None
    if not ok:
        raise ValueError(
            f"lengths must lie in [1, T] = [1, {n_steps}]; got min {int(xp.min(lengths))}, "
            f"max {int(xp.max(lengths))}"
        )


def _reverse_time(a, index, xp):
    """Reverse (T, N, F) along time, within each sequence's length when ``index`` is given."""
    if index is None:
        return xp.flip(a, axis=0)
    idx = xp.broadcast_to(index[..., None], a.shape)
    return xp.take_along_axis(a, idx, axis=0)


# --------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class _LayerSpec:
    """Shared implementation of :class:`RNN`, :class:`LSTM` and :class:`GRU`."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    _: KW_ONLY
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    dropout: float = 0.0
    learn_initial_state: bool = False
    weight_drop: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0

    mode: ClassVar[str] = ""

    def __post_init__(self):
        for name in ("input_size", "hidden_size", "num_layers"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        for name in ("bidirectional", "batch_first", "bias", "learn_initial_state"):
            check_bool(name, getattr(self, name))
        # 1 is refused: torch.nn's dropout=1 zeroes every layer's output but the
        # last, which no inverted scaling 1/(1-p) can express.
        object.__setattr__(self, "dropout", check_probability("dropout", self.dropout))
        for name in ("weight_drop", "recurrent_dropout", "zoneout"):
            object.__setattr__(self, name, check_probability(name, getattr(self, name)))
        if self.recurrent_dropout and not self.cell.takes_h_mask:
            raise ValueError(f"recurrent_dropout needs a cell that takes it (Cell.takes_h_mask); {self.cell!r} "
                             "does not")

    # ----------------------------------------------------------- static facts

    cell: ClassVar[Cell]  # the per-step cell: a field of Recurrent, a property of the built-in layers

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def n_gates(self) -> int:
        """G: 1 (RNN), 4 (LSTM), 3 (GRU)."""
        return self.cell.n_gates

    @property
    def output_size(self) -> int:
        """R, the features of h and of each direction's output: ``proj_size`` if > 0, else H."""
        return getattr(self, "proj_size", 0) or self.hidden_size

    def _state_sizes(self) -> tuple:
        """Features of each state: ``(R,)``, ``(R, H)`` for LSTM's ``(h, c)``: R for h, H for the others."""
        return (self.output_size,) + (self.hidden_size,) * (self.cell.n_states - 1)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, in ``torch.nn`` ``state_dict`` order.

        Returns
        -------
        dict of str to tuple of int
            ``weight_ih_l{k}[_reverse]`` (G*H, D_k), ``weight_hh_l{k}[_reverse]``
            (G*H, R), with ``bias`` ``bias_ih_l{k}[_reverse]`` and
            ``bias_hh_l{k}[_reverse]`` (G*H,), the cell's own parameters
            (:meth:`~portable_rnn.engine.cells.Cell.cell_params`: an LSTM's
            ``proj_size`` ``weight_hr_l{k}[_reverse]`` (P, H), its peepholes
            ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}`` (H,)), and with
            ``learn_initial_state`` one ``initial_{state}`` (L*dirs, size) per
            state of the cell (``initial_h``, and the LSTM's ``initial_c``).
        """
        GH, H, R = self.n_gates * self.hidden_size, self.hidden_size, self.output_size
        shapes: dict[str, tuple[int, ...]] = {}
        for k in range(self.num_layers):
            d_in = self.input_size if k == 0 else self.num_directions * R
            for d in range(self.num_directions):
                w_ih, w_hh, b_ih, b_hh = _init.param_names(k, d)
                shapes[w_ih] = (GH, d_in)
                shapes[w_hh] = (GH, R)
                if self.bias:
                    shapes[b_ih] = (GH,)
                    shapes[b_hh] = (GH,)
                for stem, shape in self.cell.cell_params(H).values():
                    shapes[_init.layer_param_name(stem, k, d)] = shape
        if self.learn_initial_state:
            for name, size in zip(self.cell.states, self._state_sizes()):
                shapes[f"initial_{name}"] = (self.num_layers * self.num_directions, size)
        return shapes

    # ----------------------------------------------------------- init

    def init(self, seed=0, *, like=None, xp=None, dtype=None, device=None, init="uniform",
             forget_bias=None):
        r"""Seeded parameters: same seed, same numbers on every backend.

        Parameters
        ----------
        seed : int, default 0
            Seed of the host-side NumPy generator (see :mod:`portable_rnn.init`).
        like : array, optional
            Take the namespace, dtype and device from this array (e.g. the
            input ``x``). ``dtype`` and ``device`` given too override it.
        xp : module, optional
            The library when ``like`` is not given: ``numpy``, ``jax.numpy``,
            ``torch``, ``cupy``, ``array_api_strict`` or an array-api-compat
            namespace. Default NumPy.
        dtype : dtype or {"float32", "float64"}, optional
            Default float32, as ``torch.nn`` (or the dtype of ``like``).
        device : device, optional
            Default the library's default device (or the device of ``like``).
        init : {"uniform", "xavier", "orthogonal"}, default "uniform"
            Weight scheme. ``"uniform"`` is PyTorch's
            :math:`U(-1/\sqrt{H}, 1/\sqrt{H})` for weights and biases; the
            other two apply Glorot-uniform or (semi-)orthogonal matrices to
            each gate's block of the weights and keep the uniform biases.
        forget_bias : float, optional
            LSTM only (needs ``bias``): set the forget-gate slice ``[H:2H]`` of
            every ``bias_ih`` to this value and of every ``bias_hh`` to 0, so
            the forget gate starts at :math:`\sigma(\text{forget\_bias})`.

        Returns
        -------
        dict of str to array
            Keys and shapes of :meth:`param_shapes` (PyTorch's ``state_dict``).
        """
        seed = _init.check_seed(seed)
        if init not in _init.SCHEMES:
            raise ValueError(f"init must be one of {list(_init.SCHEMES)}, got {init!r}")
        if forget_bias is not None:
            if "f" not in self.cell.gates:
                raise ValueError(f"forget_bias is for LSTM only; {type(self).__name__} has no forget gate")
            if not self.bias:
                raise ValueError("forget_bias needs bias=True; this LSTM has no biases")
            forget_bias = check_real("forget_bias", forget_bias)
        xp, dtype, device = resolve_target(like, xp, dtype, device)
        host = _init.draw(
            n_gates=self.n_gates, input_size=self.input_size, hidden_size=self.hidden_size,
            num_layers=self.num_layers, num_directions=self.num_directions, bias=self.bias,
            seed=seed, scheme=init, forget_bias=forget_bias, proj_size=getattr(self, "proj_size", 0),
            cell_params={stem: shape for stem, shape in self.cell.cell_params(self.hidden_size).values()
                         if stem != "weight_hr"},  # the projection is drawn by proj_size
            fixed=self.cell.fixed_init,
        )
        shapes = self.param_shapes()
        host.update({name: _init.zeros(shapes[name]) for name in shapes if name.startswith("initial_")})
        return to_namespace({name: host[name] for name in shapes}, xp, dtype, device)

    def dropout_masks(self, seed, x):
        r"""Training-mode dropout factors for one :meth:`forward` over ``x``, drawn from a seed.

        Parameters
        ----------
        seed : int
            Seed of the host-side NumPy generator: the same seed gives the
            same factors on every backend.
        x : array (T, N, D), or (N, T, D) when ``batch_first``
            The input the factors are for: their layout, library, dtype and device.

        Returns
        -------
        tuple of arrays, shaped like ``out`` ((T, N, dirs*R) or (N, T, dirs*R))
            One per layer but the last, each entry 0 with probability
            ``dropout`` and :math:`1/(1 - \text{dropout})` otherwise; empty
            when ``dropout`` is 0 or there is one layer. Pass them as
            :meth:`forward`'s ``dropout_masks``.
        """
        seed = _init.check_seed(seed)
        xp = namespace_of(x=x)
        dtype = check_floating(xp, x=x)
        time_axis = self._check_input_shape(x)
        if self.dropout == 0 or self.num_layers == 1:
            return ()
        shape = self._out_shape(x.shape[time_axis], x.shape[1 - time_axis])
        host = _init.dropout_factors(seed, shape, self.dropout, self.num_layers - 1)
        made = to_namespace({str(k): a for k, a in enumerate(host)}, xp, dtype, placement(x))
        return tuple(made.values())

    def weight_drop_masks(self, seed, params):
        r"""Training-mode weight-drop factors for one :meth:`forward`, drawn from a seed.

        Parameters
        ----------
        seed : int
            Seed of the host-side NumPy generator: the same seed gives the
            same factors on every backend.
        params : dict of str to array
            The parameters the factors are for: their library, dtype and device.

        Returns
        -------
        dict of str to array (G*H, R)
            One per ``weight_hh`` name, each entry 0 with probability
            ``weight_drop`` and :math:`1/(1 - \text{weight\_drop})` otherwise; empty
            when ``weight_drop`` is 0. Pass them as :meth:`forward`'s ``weight_masks``.
        """
        seed = _init.check_seed(seed)
        xp, dtype = self._check_params(params)
        names = self._recurrent_weight_names()
        if self.weight_drop == 0:
            return {}
        shape = self.param_shapes()[names[0]]
        host = _init.dropout_factors(seed, shape, self.weight_drop, len(names))
        return to_namespace(dict(zip(names, host)), xp, dtype, placement(params[names[0]]))

    def recurrent_dropout_masks(self, seed, x):
        r"""Training-mode recurrent dropout factors for one :meth:`forward` over ``x``, drawn from a seed.

        Parameters
        ----------
        seed : int
            Seed of the host-side NumPy generator (the same factors on every backend).
        x : array (T, N, D), or (N, T, D) when ``batch_first``
            The input the factors are for: their library, dtype and device.

        Returns
        -------
        array (L*dirs, N, R) or None
            0 with probability ``recurrent_dropout`` and
            :math:`1/(1 - \text{recurrent\_dropout})` otherwise, index
            ``layer * dirs + direction``; ``None`` when ``recurrent_dropout``
            is 0. Pass it as :meth:`forward`'s ``recurrent_masks``.
        """
        xp, dtype, (T, N) = self._mask_target(seed, x)
        if self.recurrent_dropout == 0:
            return None
        shape = (self.num_layers * self.num_directions, N, self.output_size)
        (host,) = _init.dropout_factors(seed, shape, self.recurrent_dropout, 1)
        return to_namespace({"m": host}, xp, dtype, placement(x))["m"]

    def zoneout_masks(self, seed, x):
        r"""Training-mode zoneout factors for one :meth:`forward` over ``x``, drawn from a seed.

        Parameters
        ----------
        seed : int
            Seed of the host-side NumPy generator (the same factors on every backend).
        x : array (T, N, D), or (N, T, D) when ``batch_first``

        Returns
        -------
        tuple of arrays (L*dirs, T, N, F) or None
            One per state of the cell (F = R for h, H for an LSTM's c), 0
            (keep the previous value) with probability ``zoneout`` and 1
            otherwise, time-major in the order each direction runs its steps;
            ``None`` when ``zoneout`` is 0. Pass them as :meth:`forward`'s ``zoneout_masks``.
        """
        xp, dtype, (T, N) = self._mask_target(seed, x)
        if self.zoneout == 0:
            return None
        LD = self.num_layers * self.num_directions
        shapes = [(LD, T, N, size) for size in self._state_sizes()]
        host = _init.update_factors(seed, shapes, self.zoneout)
        return tuple(to_namespace(dict(zip(self.cell.states, host)), xp, dtype, placement(x)).values())

    def _mask_target(self, seed, x):
        """Check a mask drawer's ``seed`` and ``x``; return ``(xp, dtype, (T, N))``."""
        _init.check_seed(seed)
        xp = namespace_of(x=x)
        dtype = check_floating(xp, x=x)
        time_axis = self._check_input_shape(x)
        return xp, dtype, (x.shape[time_axis], x.shape[1 - time_axis])

    def _recurrent_weight_names(self) -> list:
        """The ``weight_hh`` names, layer by layer and direction by direction."""
        return [_init.param_names(k, d)[1] for k in range(self.num_layers) for d in range(self.num_directions)]

    # ----------------------------------------------------------- checks

    def _check_params(self, params, name="params"):
        """Keys, shapes, library, dtype and device of ``params``; returns ``(xp, dtype)``."""
        return check_params(name, params, self.param_shapes(), owner=self)

    def _named_params(self, params, name="params"):
        return {f"{name}['{k}']": v for k, v in params.items()}

    def state_parts(self, state, name="state", allow_none=False):
        """``state`` as a tuple with one array per state of the cell, ``(h,)`` or ``(h, c)``.

        The inverse of :meth:`state_value`. A wrong structure (a pair for a
        GRU, one array for an LSTM) is a ``TypeError`` naming ``name``;
        ``allow_none`` admits ``None`` entries (gradients that are zero).
        """
        states = self.cell.states
        if len(states) > 1:
            names, kind = ", ".join(states), "pair" if len(states) == 2 else "tuple"
            if not (isinstance(state, (tuple, list)) and len(state) == len(states)):
                raise TypeError(
                    f"{name} must be a {kind} ({names}) of arrays (L*dirs, N, .) for {self._cell_name()}, "
                    f"got {type(state).__name__}"
                )
            if not allow_none and any(s is None for s in state):
                raise TypeError(f"{name} must be a {kind} ({names}) of arrays; use state=None for zeros")
            return tuple(state)
        if isinstance(state, (tuple, list)):
            raise TypeError(
                f"{name} must be one array (L*dirs, N, H) for {self._cell_name()} "
                f"(its one state is {states[0]}), got a {type(state).__name__}"
            )
        return (state,)

    def _cell_name(self) -> str:
        return type(self).__name__

    def _state_names(self, name):
        states = self.cell.states
        return tuple(f"{name}[{j}] ({s})" for j, s in enumerate(states)) if len(states) > 1 else (name,)

    def state_value(self, parts):
        """The public form of a state: one array, or the tuple ``(h, c)`` for a cell with two states."""
        return tuple(parts) if len(parts) > 1 else parts[0]

    def _out_shape(self, T, N):
        F = self.num_directions * self.output_size
        return (N, T, F) if self.batch_first else (T, N, F)

    def _weights(self, params, k, d, weight_masks=None):
        """``(W_ih, W_hh, b_ih, b_hh, cell_params)`` of layer ``k``, direction ``d``; ``None`` for absent biases.

        ``W_hh`` is multiplied by its weight-drop factor when ``weight_masks`` has one.
        """
        w_ih, w_hh, b_ih, b_hh = _init.param_names(k, d)
        own = {kw: params[_init.layer_param_name(stem, k, d)]
               for kw, (stem, _) in self.cell.cell_params(self.hidden_size).items()}
        W_hh = params[w_hh] * weight_masks[w_hh] if weight_masks else params[w_hh]
        if self.bias:
            return params[w_ih], W_hh, params[b_ih], params[b_hh], own
        return params[w_ih], W_hh, None, None, own

    # ----------------------------------------------------------- forward

    def forward(self, params, x, state=None, lengths=None, *, dropout_masks=None, weight_masks=None,
                recurrent_masks=None, zoneout_masks=None, retain="full", checkpoint_every=None, fast_path="auto",
                tape=None):
        r"""Run the stacked layer over a batch of sequences.

        Parameters
        ----------
        params : dict of str to array
            As returned by :meth:`init` (PyTorch's ``state_dict`` names).
        x : array (T, N, D), or (N, T, D) when ``batch_first``
        state : array (L*dirs, N, R), or a pair of them for LSTM, optional
            Initial state ``h_0`` (``(h_0, c_0)`` for LSTM, ``c_0`` being
            (L*dirs, N, H)); ``None`` is zeros. Index ``layer * dirs + direction``.
        lengths : integer array (N,), optional
            Valid steps of each sequence (right padding), ``1 <= lengths <= T``.
            The range is checked only when the values are concrete: the check
            reads them on the host, so it is skipped for JAX tracers (under
            ``jax.jit`` out-of-range lengths give unspecified results) and
            costs one device sync on eager GPU backends, the only one of a
            forward pass. Lengths without values (torch ``meta`` or fake
            tensors, ``torch.func.vmap``'s batched tensors) raise ``TypeError``.
        dropout_masks : tuple of arrays shaped like ``out``, keyword-only, optional
            Training mode: the factor each layer's output but the last's is
            multiplied by before the next layer reads it (one array per layer
            but the last, e.g. from :meth:`dropout_masks`); only for a spec
            with ``dropout > 0``. ``None`` (or ``()``) is evaluation mode.
        weight_masks : dict of str to array (G*H, R), keyword-only, optional
            Training mode of a spec with ``weight_drop > 0``: each
            ``weight_hh`` is multiplied by its factor (e.g. from
            :meth:`weight_drop_masks`). ``None`` (or ``{}``) is evaluation mode.
        recurrent_masks : array (L*dirs, N, R), keyword-only, optional
            Training mode of a spec with ``recurrent_dropout > 0``: the factor
            on :math:`h_{t-1}` in each layer and direction's recurrent
            product (e.g. from :meth:`recurrent_dropout_masks`). ``None`` is evaluation mode.
        zoneout_masks : tuple of arrays (L*dirs, T, N, F), keyword-only, optional
            Training mode of a spec with ``zoneout > 0``: one per state, 1
            where a unit takes its new value and 0 where it keeps the old
            (e.g. from :meth:`zoneout_masks`). ``None`` is evaluation mode,
            where every unit blends with the expectation :math:`1 - p`.
        retain : {"full", "checkpoint", "none"}, keyword-only
            What each layer keeps for :meth:`backward`, its tape: every step's states
            and gates (``"full"``, about 7 T N H numbers per LSTM layer and
            direction); only the states entering segments of at most
            ``checkpoint_every`` steps (``"checkpoint"``: the backward
            recomputes one segment at a time, one more forward pass of work
            for memory that grows like sqrt(T)); or nothing (``"none"``, for
            inference: the returned tape is ``None``). Gradients from a
            checkpointed tape equal the full tape's (see
            :func:`portable_rnn.engine.sequence.backward`).
        checkpoint_every : int, keyword-only, optional
            Steps per segment at most for ``"checkpoint"`` and ``"none"``;
            ``None`` is ceil(sqrt(T)) for ``"checkpoint"`` and
            :data:`portable_rnn.engine.sequence.INFERENCE_SEGMENT` for ``"none"``.
        fast_path : {"auto", True, False}, keyword-only
            Whether the fast kernels for NumPy arrays and CPU torch tensors run
            each layer: where they accept the case (``"auto"``), always
            (``True``: a ``ValueError`` says why they decline, e.g. an LSTM
            with ``proj_size`` or JAX arrays), or never (``False``: the
            portable code). The same numbers either way, to rounding.
        tape : {"full", "checkpoint", "none"}, keyword-only, optional
            ``retain``'s deprecated spelling.

        Returns
        -------
        out : array (T, N, dirs*R), or (N, T, dirs*R) when ``batch_first``
            The last layer's hidden states, zero at padded steps.
        state : array (L*dirs, N, R), or the pair ``(h_n, c_n)`` for LSTM
            The state after each sequence's last valid step (for the reverse
            direction: after it has consumed step 0).
        tape : RecurrentTape or None
            For :meth:`backward`; ``None`` for ``retain="none"``.
        """
        retain, checkpoint_every = check_retain(retain, checkpoint_every, tape=tape)
        xp, dtype, dev, parts, masks = self._check_forward(params, x, state, lengths, dropout_masks)
        weight_masks = self._check_weight_masks(params, weight_masks)
        zoneout_masks = self._check_recurrent_masks(x, recurrent_masks, zoneout_masks)
        if self.batch_first:
            x = xp.permute_dims(x, (1, 0, 2))
            masks = tuple(xp.permute_dims(m, (1, 0, 2)) for m in masks)
        mask = index = None
        if lengths is not None:
            mask, index = _length_maps(lengths, x.shape[0], dtype, dev, xp)
        if self.learn_initial_state:
            parts = self._learned_states(params, x.shape[1], xp)
        states0 = self._initial_states(x, parts, dtype, dev, xp)
        zoneout = self._zoneout_of_layers(zoneout_masks, x.shape[0], dtype, dev, xp)

        layer_in, finals, tapes = x, [], []
        for k in range(self.num_layers):
            if k > 0 and masks:
                layer_in = layer_in * masks[k - 1]  # dropout on layer k - 1's output
            outs, layer_tapes = [], []
            for d in range(self.num_directions):
                W_ih, W_hh, b_ih, b_hh, own = self._weights(params, k, d, weight_masks)
                inp = layer_in if d == 0 else _reverse_time(layer_in, index, xp)
                i = k * self.num_directions + d
                out_d, final_d, tape_d = sequence.forward(
                    self.cell, inp, states0[i], W_ih, W_hh, b_ih, b_hh, mask, xp=xp, cell_params=own,
                    zoneout=zoneout(i),
                    h_mask=None if recurrent_masks is None else recurrent_masks[i, ...],
                    retain=retain, checkpoint_every=checkpoint_every, fast_path=fast_path,
                )
                outs.append(out_d if d == 0 else _reverse_time(out_d, index, xp))
                finals.append(final_d)
                layer_tapes.append(tape_d)
            layer_in = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-1)
            tapes.append(tuple(layer_tapes))

        if retain == "full" and self.num_directions == 1 and mask is None and not is_jax_array(layer_in):
            # Here the output is the tape's own state array: hand back a copy, so that
            # writing into ``out`` cannot change what backward() computes. (JAX arrays
            # are immutable; with a mask or two directions ``out`` is already new.)
            # A reshape copy, not asarray(copy=True): torch.asarray drops requires_grad in
            # the torch releases without the fix of pytorch/pytorch#170819, and then
            # torch.autograd and torch.func.grad would see no graph behind ``out``.
            layer_in = xp.reshape(layer_in, tuple(layer_in.shape), copy=True)
        out = xp.permute_dims(layer_in, (1, 0, 2)) if self.batch_first else layer_in
        final = tuple(xp.stack([f[j] for f in finals], axis=0) for j in range(self.cell.n_states))
        if retain == "none":
            return out, self.state_value(final), None
        return out, self.state_value(final), _tape_type(self)(tuple(tapes), index, masks, weight_masks or None)

    def _zoneout_of_layers(self, zoneout_masks, T, dtype, dev, xp):
        """``i -> `` the engine's zoneout factors of layer and direction ``i`` (None without zoneout).

        Training mode slices ``zoneout_masks``; evaluation mode blends every
        step with the expectation :math:`1 - p`, one (T, 1, 1) factor.
        """
        if zoneout_masks is not None:
            return lambda i: tuple(z[i, ...] for z in zoneout_masks)
        if not self.zoneout:
            return lambda i: None
        expected = (xp.full((T, 1, 1), 1 - self.zoneout, dtype=dtype, device=dev),) * self.cell.n_states
        return lambda i: expected

    def _learned_states(self, params, N, xp):
        """The ``initial_*`` parameters, (L*dirs, size) each, broadcast over the batch of ``N``."""
        return tuple(xp.broadcast_to(params[f"initial_{name}"][:, None, :], (self.num_layers * self.num_directions,
                                                                             N, size))
                     for name, size in zip(self.cell.states, self._state_sizes()))

    def _initial_states(self, x, parts, dtype, dev, xp):
        """Per layer and direction, the initial state tuple: from ``parts`` (L*dirs, N, .), or zeros."""
        if parts is not None:
            return [tuple(s[i, ...] for s in parts) for i in range(parts[0].shape[0])]
        # Made from x, so they have x's placement: under jax.shard_map a state made
        # with zeros((N, R)) would be unsharded and break the scan's carry types.
        base = xp.zeros_like(x[0, :, :1])
        made = {size: base + xp.zeros((1, size), dtype=dtype, device=dev) for size in set(self._state_sizes())}
        return [tuple(made[size] for size in self._state_sizes())] * (self.num_layers * self.num_directions)

    def _check_input_shape(self, x) -> int:
        """Check the shape of ``x`` (any T >= 1 and N, D = input_size); return its time axis."""
        D = self.input_size
        layout = "(N, T, D)" if self.batch_first else "(T, N, D)"
        check_shape("x", x, (None, None, D), f"{layout} with D = input_size = {D}")
        time_axis = 1 if self.batch_first else 0
        check_time_steps("x", x, axis=time_axis)
        return time_axis

    def _mask_parts(self, masks):
        """``dropout_masks`` as a tuple of one array per layer but the last (``()`` for ``None``)."""
        if masks is None:
            return ()
        if not isinstance(masks, (tuple, list)):
            raise TypeError(f"dropout_masks must be a tuple of arrays shaped like out, got {type(masks).__name__}")
        if masks and self.dropout == 0:
            raise ValueError("dropout_masks were given but this spec has dropout=0.0; make it with dropout=p")
        if masks and len(masks) != self.num_layers - 1:
            raise ValueError(
                f"dropout_masks must hold num_layers - 1 = {self.num_layers - 1} array(s), one per layer "
                f"but the last, got {len(masks)}"
            )
        return tuple(masks)

    def _check_weight_masks(self, params, weight_masks) -> dict:
        """``weight_masks`` checked against the spec and ``params``: one factor per ``weight_hh``, or ``{}``."""
        if weight_masks is None or (isinstance(weight_masks, dict) and not weight_masks):
            return {}
        if not isinstance(weight_masks, dict):
            raise TypeError(f"weight_masks must be a dict of arrays by weight_hh name, got {type(weight_masks).__name__}")
        if self.weight_drop == 0:
            raise ValueError("weight_masks were given but this spec has weight_drop=0.0; make it with weight_drop=p")
        names = self._recurrent_weight_names()
        if sorted(weight_masks) != sorted(names):
            raise ValueError(f"weight_masks must have the keys {names}, got {sorted(weight_masks)}")
        named = {f"weight_masks[{name!r}]": weight_masks[name] for name in names}
        check_floating(namespace_of(**named, **{name: params[name] for name in names}), **named)
        check_same_device(**named, **{name: params[name] for name in names})
        for name in names:
            check_shape(f"weight_masks[{name!r}]", weight_masks[name], tuple(params[name].shape),
                        f"the shape of {name}")
        return {name: weight_masks[name] for name in names}

    def _check_recurrent_masks(self, x, recurrent_masks, zoneout_masks):
        """Check ``recurrent_masks`` and ``zoneout_masks`` against the spec and ``x``; zoneout's as a tuple or None."""
        T, N = (x.shape[1], x.shape[0]) if self.batch_first else (x.shape[0], x.shape[1])
        LD = self.num_layers * self.num_directions
        named = {}
        if recurrent_masks is not None:
            if self.recurrent_dropout == 0:
                raise ValueError("recurrent_masks were given but this spec has recurrent_dropout=0.0; "
                                 "make it with recurrent_dropout=p")
            check_shape("recurrent_masks", recurrent_masks, (LD, N, self.output_size),
                        f"(num_layers * dirs, N, R) = ({LD}, {N}, {self.output_size})")
            named["recurrent_masks"] = recurrent_masks
        if zoneout_masks is not None:
            if self.zoneout == 0:
                raise ValueError("zoneout_masks were given but this spec has zoneout=0.0; make it with zoneout=p")
            states = self.cell.states
            if not (isinstance(zoneout_masks, (tuple, list)) and len(zoneout_masks) == len(states)):
                raise TypeError(f"zoneout_masks must be a tuple of {len(states)} array(s), one per state {states}, "
                                f"got {type(zoneout_masks).__name__}")
            for name, z, size in zip(states, zoneout_masks, self._state_sizes()):
                check_shape(f"zoneout_masks ({name})", z, (LD, T, N, size),
                            f"(num_layers * dirs, T, N, F) = ({LD}, {T}, {N}, {size})")
                named[f"zoneout_masks ({name})"] = z
            zoneout_masks = tuple(zoneout_masks)
        if named:
            check_floating(namespace_of(x=x, **named), x=x, **named)
            check_same_device(x=x, **named)
        return zoneout_masks

    def _check_forward(self, params, x, state, lengths, dropout_masks):
        """Check :meth:`forward`'s arguments; return ``(xp, dtype, device, state parts or None, masks)``."""
        self._check_params(params)
        if self.learn_initial_state and state is not None:
            raise ValueError("state must be None: the initial state is a parameter of this layer "
                             "(learn_initial_state=True), params['initial_h'] and the like")
        parts = None if state is None else self.state_parts(state, "state")
        masks = self._mask_parts(dropout_masks)
        named = {"x": x}
        named.update(self._named_params(params))
        if parts is not None:
            named.update(zip(self._state_names("state"), parts))
        named.update({f"dropout_masks[{k}]": m for k, m in enumerate(masks)})
        xp = namespace_of(**named, lengths=lengths)
        dtype = check_floating(xp, **named)
        dev = check_same_device(**named, lengths=lengths)
        if dev is None:
            dev = _device_or_none(x)

        LD = self.num_layers * self.num_directions
        time_axis = self._check_input_shape(x)
        T, N = x.shape[time_axis], x.shape[1 - time_axis]
        if parts is not None:
            for name, s, size in zip(self._state_names("state"), parts, self._state_sizes()):
                what = "H" if size == self.hidden_size else "proj_size"
                check_shape(name, s, (LD, N, size), f"(num_layers * dirs, N, {what}) = ({LD}, {N}, {size})")
        for k, m in enumerate(masks):
            check_shape(f"dropout_masks[{k}]", m, self._out_shape(T, N), "the shape of out")
        if lengths is not None:
            _check_lengths(lengths, T, N, xp)
        return xp, dtype, dev, parts, masks

    # ----------------------------------------------------------- backward

    def backward(self, params, tape, d_out, d_state=None, truncate=None, *, fast_path="auto"):
        r"""Backpropagation through time through every layer and direction.

        Layers are visited top-down. In layer ``k`` each direction's engine
        backward gets its slice of the gradient of the layer's output (mapped
        through the same within-length reversal for the reverse direction) and
        of the final state; the input gradients of both directions add up to
        the gradient of layer ``k - 1``'s output,
        :math:`dY_{k-1} = (dX^{\rightarrow}_k + \pi(dX^{\leftarrow}_k)) \odot M_{k-1}`,
        with :math:`M_{k-1}` the dropout factors of the forward pass (1 in
        evaluation mode).

        Parameters
        ----------
        params : dict of str to array
            The parameters used in :meth:`forward`.
        tape : RecurrentTape
            From :meth:`forward` (it holds the dropout factors, if any).
        d_out : array shaped like ``out``, or None
            Gradient of the loss with respect to ``out``; ``None`` is zero.
            Entries at padded steps are ignored (``out`` is constant there).
        d_state : array (L*dirs, N, R), a pair of them or None for LSTM, optional
            Gradient with respect to the final state (for LSTM the c part is
            (L*dirs, N, H)); ``None`` (or a ``None`` entry of the LSTM pair) is zero.
        truncate : int, optional
            Truncated BPTT, per layer and direction: no gradient crosses the
            recurrence between windows ``[0, k), [k, 2k), ...`` of each
            direction's own pass (for the reverse direction with lengths,
            windows count from each sequence's last valid step). Gradients
            still flow between layers at every step. ``None`` is full BPTT.
            With lengths, the final-state gradient of a sequence shorter than
            T crosses its padding untouched and enters at its last valid
            step; cuts happen only between valid steps.
        fast_path : {"auto", True, False}, keyword-only
            As in :meth:`forward`, for the backward's kernels.

        Returns
        -------
        grads : dict of str to array
            Same keys and shapes as ``params``.
        dx : array shaped like ``x``
        dstate0 : array (L*dirs, N, R), or the pair ``(dh_0, dc_0)`` for LSTM
            Gradient with respect to the initial state (zeros when it was
            ``None`` in the forward pass).
        """
        truncate = check_truncate(truncate)
        xp, ds_parts = self._check_backward(params, tape, d_out, d_state)
        layers, index, dropout, weight_masks = tape
        L, dirs, R = self.num_layers, self.num_directions, self.output_size
        d_layer_out = d_out
        if d_out is not None and self.batch_first:
            d_layer_out = xp.permute_dims(d_out, (1, 0, 2))

        def d_final(i):
            if ds_parts is None:
                return None
            return tuple(None if s is None else s[i, ...] for s in ds_parts)

        grads: dict = {}
        dstate0: list = [None] * (L * dirs)
        for k in reversed(range(L)):
            d_in = None
            for d in range(dirs):
                W_ih, W_hh, _, _, own = self._weights(params, k, d, weight_masks)
                d_out_d = None
                if d_layer_out is not None:
                    d_out_d = d_layer_out[..., d * R : (d + 1) * R] if dirs > 1 else d_layer_out
                    if d == 1:
                        d_out_d = _reverse_time(d_out_d, index, xp)
                g = sequence.backward(
                    self.cell, layers[k][d], d_out_d, d_final(k * dirs + d), W_ih, W_hh,
                    xp=xp, truncate=truncate, bias=self.bias, cell_params=own, fast_path=fast_path,
                )
                dx_d = g.dx if d == 0 else _reverse_time(g.dx, index, xp)
                d_in = dx_d if d_in is None else d_in + dx_d
                self._collect(grads, g, k, d, weight_masks)
                dstate0[k * dirs + d] = g.dstate0
            d_layer_out = d_in * dropout[k - 1] if k > 0 and dropout else d_in

        dx = xp.permute_dims(d_layer_out, (1, 0, 2)) if self.batch_first else d_layer_out
        d0 = tuple(xp.stack([s[j] for s in dstate0], axis=0) for j in range(self.cell.n_states))
        if self.learn_initial_state:  # broadcast over the batch in forward: summed over it here
            grads.update({f"initial_{name}": xp.sum(d, axis=1) for name, d in zip(self.cell.states, d0)})
        grads = {key: grads[key] for key in self.param_shapes()}  # state_dict order
        return grads, dx, self.state_value(d0)

    def _collect(self, grads, g, k, d, weight_masks=None):
        """Enter the parameter gradients ``g`` of layer ``k``, direction ``d`` under their names in ``grads``.

        ``g`` is a ``sequence.Grads``, whose ``dcell_params`` hold the cell's own parameters' gradients.
        """
        w_ih, w_hh, b_ih, b_hh = _init.param_names(k, d)
        grads[w_ih], grads[w_hh] = g.dW_ih, g.dW_hh
        if weight_masks:  # the forward used weight_hh * factor
            grads[w_hh] = g.dW_hh * weight_masks[w_hh]
        if self.bias:
            grads[b_ih], grads[b_hh] = g.db_ih, g.db_hh
        for kw, (stem, _) in self.cell.cell_params(self.hidden_size).items():
            grads[_init.layer_param_name(stem, k, d)] = g.dcell_params[kw]

    def _check_backward(self, params, tape, d_out, d_state):
        """Check :meth:`backward`'s arguments; return ``(xp, d_state parts or None)``."""
        self._check_params(params)
        L, dirs = self.num_layers, self.num_directions
        if tape is None:
            raise TypeError("tape is None: forward(retain='none') keeps nothing to differentiate; "
                            "run forward() with retain='full' or retain='checkpoint'")
        made_by = getattr(tape, "spec", None)
        if not (isinstance(tape, RecurrentTape) and made_by is not None):
            raise TypeError(
                f"tape must be the RecurrentTape returned by forward() of this spec "
                f"({L} layer(s) x {dirs} direction(s)), got {type(tape).__name__}"
            )
        if made_by != self:
            raise ValueError(f"tape was made by {made_by!r}, not by this spec {self!r}")
        x0 = tape[0][0][0].x
        T, N = x0.shape[0], x0.shape[1]
        ds_parts = None if d_state is None else self.state_parts(d_state, "d_state", allow_none=True)
        named = self._named_params(params)
        named.update({"tape": x0, "d_out": d_out})
        if ds_parts is not None:
            named.update(zip(self._state_names("d_state"), ds_parts))
        xp = namespace_of(**named)
        check_floating(xp, **named)
        check_same_device(**named)
        if d_out is not None:
            check_shape("d_out", d_out, self._out_shape(T, N), "the shape of out from forward()")
        for name, s, size in zip(self._state_names("d_state"), ds_parts or (), self._state_sizes()):
            if s is not None:
                check_shape(name, s, (L * dirs, N, size), "the shape of the final state from forward()")
        return xp, ds_parts


@dataclass(frozen=True)
class _BuiltIn(_LayerSpec):
    """A layer of one of the built-in cells, named by ``mode``."""

    @property
    def cell(self):  # type: ignore[override]  # the base declares it; Recurrent makes it a field
        """The per-step cell (:mod:`portable_rnn.engine.cells`, :mod:`portable_rnn.engine.layer_norm`)."""
        if getattr(self, "layer_norm", False):
            return LAYER_NORM_CELLS[self.mode]()
        return cell_for(self.mode, getattr(self, "nonlinearity", "tanh"), getattr(self, "proj_size", 0),
                        getattr(self, "reset_after", True), getattr(self, "peephole", False))


@dataclass(frozen=True)
class RNN(_BuiltIn):
    r"""Stacked Elman RNN, as ``torch.nn.RNN``.

    .. math::

        h_t = \phi(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh}),
        \qquad \phi \in \{\tanh, \mathrm{relu}\}

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    num_layers : int, default 1
    bidirectional, batch_first, bias : bool, keyword-only
        Defaults ``False, False, True``. Keyword-only because ``torch.nn``'s
        positional order differs (``bias`` comes before ``bidirectional``).
    dropout : float in [0, 1), keyword-only, default 0.0
        Dropout between layers, as ``torch.nn``: applied only when
        :meth:`forward` gets ``dropout_masks`` (see the module docstring).
    learn_initial_state : bool, keyword-only, default False
        The initial state as parameters, ``initial_h`` (and an LSTM's
        ``initial_c``) of shape (L*dirs, R), shared by every sequence of the
        batch, starting at zero; :meth:`forward` then takes no ``state``.
        Every layer class takes it.
    weight_drop : float in [0, 1), keyword-only, default 0.0
        DropConnect on every ``weight_hh`` in training mode (AWD-LSTM's
        weight drop; see the module docstring). Every layer class takes it.
    nonlinearity : {"tanh", "relu"}, keyword-only, default "tanh"

    See the module docstring for shapes, lengths and the reverse direction;
    methods :meth:`init`, :meth:`forward`, :meth:`backward`, :meth:`param_shapes`.
    """

    _: KW_ONLY
    nonlinearity: str = "tanh"
    mode: ClassVar[str] = "rnn"

    def __post_init__(self):
        super().__post_init__()
        self.cell  # the cell checks its nonlinearity


@dataclass(frozen=True)
class LSTM(_BuiltIn):
    r"""Stacked LSTM, as ``torch.nn.LSTM`` (gate order i, f, g, o; optional projections).

    .. math::

        [z_i, z_f, z_g, z_o] &= x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh} \\
        c_t &= \sigma(z_f) \odot c_{t-1} + \sigma(z_i) \odot \tanh(z_g), \qquad
        h_t = \sigma(z_o) \odot \tanh(c_t)

    and with ``proj_size`` P > 0, :math:`h_t = W_{hr} (\sigma(z_o) \odot \tanh(c_t))`
    with ``weight_hr_l{k}`` (P, H): h, the outputs and ``h_0`` have P features,
    ``weight_hh`` is (4H, P) and layers after the first read dirs*P features.
    With ``peephole=True`` the gates also read the cell state (Gers &
    Schmidhuber 2000): :math:`z_i + w_{ci} \odot c_{t-1}`,
    :math:`z_f + w_{cf} \odot c_{t-1}` and :math:`z_o + w_{co} \odot c_t`,
    with ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}`` (H,).

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bidirectional, batch_first, bias : bool, keyword-only
    dropout : float in [0, 1), keyword-only, default 0.0
        Dropout between layers (see the module docstring).
    proj_size : int, keyword-only, default 0
        P, ``0 <= P < hidden_size``; 0 is no projection.
    peephole : bool, keyword-only, default False
        Peephole connections. No other framework's LSTM layer has them, so
        the exporters refuse such a spec; it runs the portable engine on every backend.
    layer_norm : bool, keyword-only, default False
        Layer normalisation of the input and recurrent gate pre-activations
        and of the cell state (Ba, Kiros & Hinton 2016; see
        :class:`~portable_rnn.engine.layer_norm.LayerNormLSTMCell`), with gains
        ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` (4H,), ``weight_ln_c_l{k}``
        (H,) starting at 1 and biases ``bias_ln_*`` starting at 0. Not with
        ``proj_size`` or ``peephole``; the exporters refuse it.

    The state is the pair ``(h, c)`` in and out of :meth:`forward` and
    :meth:`backward`; :meth:`init` takes ``forget_bias``.
    """

    _: KW_ONLY
    proj_size: int = 0
    peephole: bool = False
    layer_norm: bool = False
    mode: ClassVar[str] = "lstm"

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "proj_size", check_int("proj_size", self.proj_size, minimum=0))
        check_bool("peephole", self.peephole)
        check_bool("layer_norm", self.layer_norm)
        if self.layer_norm and (self.proj_size or self.peephole):
            raise ValueError(f"layer_norm=True takes neither proj_size nor peephole; got proj_size={self.proj_size}, "
                             f"peephole={self.peephole}")
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"proj_size must be smaller than hidden_size = {self.hidden_size}, got {self.proj_size}"
            )


@dataclass(frozen=True)
class GRU(_BuiltIn):
    r"""Stacked GRU, as ``torch.nn.GRU`` (gate order r, z, n).

    .. math::

        r &= \sigma(x_r + h_{t-1} W_{hr}^T + b_{hr}), \quad
        z = \sigma(x_z + h_{t-1} W_{hz}^T + b_{hz}) \\
        n &= \tanh(x_n + r \odot (h_{t-1} W_{hn}^T + b_{hn})), \quad
        h_t = (1 - z) \odot n + z \odot h_{t-1}

    with :math:`x_\cdot` the gate slices of :math:`x_t W_{ih}^T + b_{ih}`.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bidirectional, batch_first, bias : bool, keyword-only
    dropout : float in [0, 1), keyword-only, default 0.0
        Dropout between layers (see the module docstring).
    reset_after : bool, keyword-only, default True
        ``False`` is the form of Cho et al. (2014) and Keras's
        ``GRU(reset_after=False)``, whose reset gate scales the state before
        the recurrent product: :math:`n = \tanh(x_n + (r \odot h_{t-1}) W_{hn}^T + b_{hn})`
        (see :class:`~portable_rnn.engine.cells.GRUCell`). It runs the portable engine on every backend.
    layer_norm : bool, keyword-only, default False
        Layer normalisation of the input and recurrent gate pre-activations
        (Ba, Kiros & Hinton 2016; see :class:`~portable_rnn.engine.layer_norm.LayerNormGRUCell`),
        with gains ``weight_ln_ih_l{k}``, ``weight_ln_hh_l{k}`` (3H,) starting
        at 1 and biases ``bias_ln_*`` starting at 0. Needs ``reset_after=True``;
        the exporters refuse it.
    """

    _: KW_ONLY
    reset_after: bool = True
    layer_norm: bool = False
    mode: ClassVar[str] = "gru"

    def __post_init__(self):
        super().__post_init__()
        check_bool("reset_after", self.reset_after)
        check_bool("layer_norm", self.layer_norm)
        if self.layer_norm and not self.reset_after:
            raise ValueError("layer_norm=True needs reset_after=True (the recurrent product is normalised whole)")


@dataclass(frozen=True)
class Recurrent(_LayerSpec):
    r"""Stacked layer of a cell of your own (or any :class:`~portable_rnn.engine.cells.Cell`).

    The cell declares its gates and states and writes its step, its local
    derivatives and its step backward (see :class:`~portable_rnn.engine.cells.Cell`);
    the layer gives it what :class:`LSTM` has: stacking, both directions,
    ``lengths``, ``truncate``, dropout between layers, the three tapes, every
    backend, :func:`portable_rnn.jax.apply` and :class:`portable_rnn.torch.Recurrent`.
    Check the cell's backward with :func:`portable_rnn.check_cell` first.

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    cell : Cell, keyword-only
        An instance (hashable, like a frozen dataclass): its ``gates`` give the
        G*H rows of ``weight_ih`` and ``weight_hh``, its ``states`` the state
        tuple, h first (one state is a bare array).
    bidirectional, batch_first, bias : bool, keyword-only
    dropout : float in [0, 1), keyword-only, default 0.0

    Parameters have the names and layout of the built-in layers
    (:meth:`param_shapes`). A layer of a cell of your own has no file format
    or importer: :func:`portable_rnn.io.save` refuses it.
    """

    _: KW_ONLY
    cell: Cell  # type: ignore[misc]

    def __post_init__(self):
        super().__post_init__()
        cell = self.cell
        if not isinstance(cell, Cell):
            raise TypeError(f"cell must be an instance of a portable_rnn.engine.cells.Cell subclass, "
                            f"got {type(cell).__name__}")
        for name in ("gates", "n_gates", "states", "n_states"):
            if not hasattr(cell, name):
                raise TypeError(f"cell {type(cell).__name__} does not declare {name!r} (see Cell)")
        if cell.n_gates != len(cell.gates) or cell.n_states != len(cell.states) or not cell.n_states:
            raise ValueError(f"cell {type(cell).__name__} declares n_gates={cell.n_gates} for gates {cell.gates} "
                             f"and n_states={cell.n_states} for states {cell.states}; they must agree")
        if cell.proj_size:
            raise ValueError("cell must have no projection (proj_size); LSTM(proj_size=P) is the projected layer")
        try:
            hash(cell)
        except TypeError:
            raise TypeError(f"cell must be hashable (a frozen dataclass, for instance), "
                            f"got an unhashable {type(cell).__name__}") from None

    def _cell_name(self) -> str:
        return type(self.cell).__name__


#: Every layer spec class by its ``mode`` (the key of :data:`portable_rnn.engine.cells.CELLS`).
LAYERS = {cls.mode: cls for cls in (RNN, LSTM, GRU)}
