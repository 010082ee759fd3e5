r"""The minimal GRU and LSTM of Feng et al., "Were RNNs All We Needed?" (2024, arXiv 2410.01201).

Their gates read the input alone, never :math:`h_{t-1}`, so each layer is a
linear recurrence

.. math::

    h_t = a_t \odot h_{t-1} + b_t

whose coefficients come from one matmul over every step at once: with
:math:`U = X W_{ih}^T + b_{ih}` (T, N, G*H) split into its gate blocks,

- minGRU (G = 2, blocks ``z, h~``): :math:`a_t = 1 - \sigma(u_z)`,
  :math:`b_t = \sigma(u_z) \odot u_{\tilde h}`;
- minLSTM (G = 3, blocks ``f, i, h~``): :math:`a_t = f'_t = f/(f+i)`,
  :math:`b_t = i'_t \odot u_{\tilde h}` with :math:`i'_t = i/(f+i) = 1 - f'_t`.

The recurrence itself is :func:`portable_rnn.linear_scan.linear_scan`: a
chunked parallel scan of about :math:`3\sqrt T` sequential steps
(``scan="parallel"``), or the T steps of the definition
(``scan="sequential"``), with the same numbers to rounding. The backward is
written by hand: :func:`~portable_rnn.linear_scan.linear_scan_backward` (a
reverse linear scan) gives :math:`\partial a_t` and :math:`\partial b_t`, the
gate chain rule turns them into :math:`\partial U`, and
:math:`dW_{ih} = \sum_{t,n} \partial U_{tn}^T x_{tn}`,
:math:`db_{ih} = \sum_{t,n} \partial U_{tn}` and :math:`dX = \partial U\, W_{ih}`
are contractions over time and batch together.

Stability. minGRU's gates come from one exponential,
:math:`c = e^{\min(u_z, L)}`, :math:`1 - z = 1/(1 + c)` and :math:`z = c\,(1 - z)`,
each to a few ulps relative to itself (no cancellation near 0 or 1); ``L``
is the largest whole number below :math:`\log` of the dtype's largest value
minus one (87 in float32, 708 in float64), so nothing overflows, and
:math:`1 - z` is clamped at :math:`1/(1 + e^L)`, the bottom of the normal
range, where the exact value would be subnormal. minLSTM's normalisation is
computed in closed form from the pre-activations: with :math:`f = \sigma(u_f)`,
:math:`i = \sigma(u_i)`, :math:`m = \min(u_f, u_i, 0)`, :math:`P = e^{m - u_f}`,
:math:`Q = e^{m - u_i}` and :math:`E = e^m` (exponentials of non-positive
numbers, one of them :math:`e^0 = 1`),

.. math::

    f' = \frac{f}{f + i} = \frac{E + Q}{(E + Q) + (E + P)}, \qquad
    i' = \frac{i}{f + i} = \frac{E + P}{(E + Q) + (E + P)},

the ratio multiplied through by :math:`(1 + e^{-u_f})(1 + e^{-u_i})\,e^{m}`:
sums of positive numbers, exact to a few ulps, with no 0/0 where both gates
underflow (:math:`u_f = u_i = -800` gives :math:`f' = i' = 1/2`, as the ratio does).

The tape. With ``retain="full"`` each layer and direction keeps, besides its
input, its pre-activations, its states after the initial one, and the gate
values the backward reads (:class:`Kept`): the backward reruns no
exponential and copies no state. Apart from the matmuls, every step of the
forward and backward is a handful of elementwise passes over (T, N, H)
arrays; the chunked scan keeps its per-chunk work small (see
:mod:`portable_rnn.linear_scan`).

Conventions are those of :mod:`portable_rnn.layers`: a frozen spec, PyTorch's
parameter names (``weight_ih_l{k}[_reverse]`` (G*H, D_k) and
``bias_ih_l{k}[_reverse]`` (G*H,), gate blocks stacked in the order above; no
recurrent weights), ``x`` (T, N, D) or (N, T, D) with ``batch_first``, the
state (L*dirs, N, H) with index ``layer * dirs + direction``, ``lengths`` for
right padding (padded steps leave the state unchanged and output zero; the
reverse direction starts at each sequence's last valid step), truncated BPTT,
and the ``retain`` choices of the tape.
"""

from __future__ import annotations

import functools
import math
from dataclasses import KW_ONLY, dataclass
from typing import ClassVar, NamedTuple

from . import init as _init
from ._validation import (
    check_bool,
    check_floating,
    check_int,
    check_params,
    check_retain,
    check_same_device,
    check_shape,
    check_time_steps,
    check_truncate,
    namespace_of,
)
from ._validation import placement as device
from .backends import resolve_target, to_namespace
from .engine.loop import scan as time_loop
from .engine.sequence import segment_length, window_keep
from .layers import _check_lengths, _device_or_none, _length_maps, _reverse_time
from .linear_scan import METHODS, _adjoint, _masked_a, linear_scan

__all__ = ["MinGRU", "MinLSTM", "MinimalCell", "MinimalTape", "Kept", "Checkpoints"]


class Kept(NamedTuple):
    """What ``retain="full"`` keeps of one layer and direction.

    Attributes
    ----------
    pre : tuple of arrays (T, N, H)
        The pre-activations, one array per gate block.
    h : array (T + 1, N, H)
        The initial state, then the state after each step (so ``h[:-1]`` is
        the state entering each step).
    gates : tuple of arrays (T, N, H)
        What the gate chain rule reads, from the layer's forward:
        :math:`(1 - z, z)` for minGRU, :math:`(f', i', -P/S, Q/S)` for minLSTM
        (the module docstring's :math:`P`, :math:`Q` and :math:`S = (E+Q)+(E+P)`).
    """

    pre: object
    h: object
    gates: tuple = ()


class Checkpoints(NamedTuple):
    """What ``retain="checkpoint"`` keeps of one layer and direction: ``h`` (S, N, H).

    ``h[s]`` is the state entering segment ``s`` of :func:`~portable_rnn.engine.sequence.segment_length`
    steps (``h[0]`` the initial state); the segment length is ceil(T / S), so
    the layout travels in the shapes (static under ``jax.jit``), not in a field.
    """

    h: object


class MinimalTape(NamedTuple):
    """What :meth:`MinGRU.backward` (and :meth:`MinLSTM.backward`) needs; a pytree of arrays.

    Attributes
    ----------
    inputs : tuple of arrays (T, N, D_k)
        Each layer's input, time-major, zero at padded steps.
    state0 : array (L*dirs, N, H)
        The initial state.
    kept : tuple of tuple of Kept or Checkpoints
        ``kept[k][d]`` for layer ``k``, direction ``d`` (the reverse
        direction's in its own, time-reversed, order).
    mask : array (T, N, 1) or None
        1.0 at valid steps, 0.0 at padding, when lengths were given.
    index : int array (T, N) or None
        The within-length time reversal when lengths were given.
    """

    inputs: tuple
    state0: object
    kept: tuple
    mask: object = None
    index: object = None  # type: ignore[assignment]  # shadows tuple.index, as RecurrentTape's field

    #: The spec whose forward made the tape, on a per-spec subclass (the tape stays a pytree).
    spec = None  # type: ignore[misc]  # a class attribute, not a field


@functools.lru_cache(maxsize=256)
def _tape_type(spec):
    """The :class:`MinimalTape` subclass that remembers ``spec`` (one per spec)."""
    return type("MinimalTape", (MinimalTape,), {"__slots__": (), "spec": spec})


def _exp_limit(dtype, xp):
    """The largest whole L with :math:`e^{L+1}` finite in ``dtype`` (87 in float32, 708 in float64)."""
    return float(math.floor(math.log(xp.finfo(dtype).max)) - 1)


def _whole_last_step(keep, xp):
    """``keep`` with 1 at its last step: the final state's gradient enters that step whole."""
    if keep is None:
        return None
    return xp.concat([keep[:-1, ...], xp.ones_like(keep[-1:, ...])], axis=0)


@dataclass(frozen=True)
class MinimalCell:
    r"""What one step of a minimal layer declares, in the terms of a cell: ``mode``, ``gates``, ``states``.

    :attr:`MinGRU.cell` and :attr:`MinLSTM.cell` are one of these, so that
    code written against a layer's ``cell`` (the char model, its checkpoints)
    reads the minimal layers alike: the state is ``h`` alone. It is not a
    :class:`~portable_rnn.engine.cells.Cell`: the gates read no state, so the
    step is :math:`h_t = a_t \odot h_{t-1} + b_t`, run by the layer's
    :func:`~portable_rnn.linear_scan.linear_scan` or :meth:`MinGRU.step`, not
    by the engine.

    Attributes
    ----------
    mode : str
        ``"mingru"`` or ``"minlstm"``.
    gates : tuple of str
        The blocks of ``weight_ih``: ``("z", "h~")`` or ``("f", "i", "h~")``.
    states : tuple of str
        ``("h",)``.
    """

    mode: str
    gates: tuple

    states: ClassVar[tuple] = ("h",)
    n_states: ClassVar[int] = 1

    @property
    def n_gates(self) -> int:
        return len(self.gates)


@dataclass(frozen=True)
class _Minimal:
    """Shared implementation of :class:`MinGRU` and :class:`MinLSTM`."""

    input_size: int
    hidden_size: int
    num_layers: int = 1
    _: KW_ONLY
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False
    scan: str = "parallel"

    gates: ClassVar[tuple] = ()
    #: The key of the layer in :data:`portable_rnn.model.MODES` (``CharModel(mode=...)``, ``--cell``).
    mode: ClassVar[str] = ""
    #: No dropout between layers: :func:`portable_rnn.jax.apply` reads it (its ``dropout_key`` changes nothing).
    dropout: ClassVar[float] = 0.0

    def __post_init__(self):
        for name in ("input_size", "hidden_size", "num_layers"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        for name in ("bias", "batch_first", "bidirectional"):
            check_bool(name, getattr(self, name))
        if not isinstance(self.scan, str) or self.scan not in METHODS:
            raise ValueError(f"scan must be one of {METHODS}, got {self.scan!r}")

    # ----------------------------------------------------------- static facts

    @property
    def n_gates(self) -> int:
        """G: 2 (minGRU: z, h~) or 3 (minLSTM: f, i, h~)."""
        return len(self.gates)

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """H, the features of h and of each direction's output."""
        return self.hidden_size

    @property
    def cell(self) -> MinimalCell:
        """What one step declares: ``mode``, ``gates`` and the one state ``h`` (:class:`MinimalCell`)."""
        return MinimalCell(self.mode, self.gates)

    def state_parts(self, state, name="state", allow_none=False):
        """``state`` as the one-element tuple ``(h,)``, as :meth:`portable_rnn.layers.GRU.state_parts`.

        A tuple or list (the LSTM's ``(h, c)``) is a ``TypeError`` naming ``name``: the
        state of a minimal layer is h alone. ``allow_none`` is accepted for the
        layers' signature (one state has no ``None`` entries to allow).
        """
        if isinstance(state, (tuple, list)):
            raise TypeError(f"{name} must be one array (L*dirs, N, H) for {type(self).__name__} "
                            f"(its one state is h), got a {type(state).__name__}")
        return (state,)

    def state_value(self, parts):
        """The public form of a state from its parts ``(h,)``: the array h."""
        (h,) = parts
        return h

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, layer by layer, forward direction first.

        Returns
        -------
        dict of str to tuple of int
            ``weight_ih_l{k}[_reverse]`` (G*H, D_k), with ``D_0 = D`` and
            ``D_k = dirs*H`` after, and with ``bias`` ``bias_ih_l{k}[_reverse]`` (G*H,).
        """
        GH = self.n_gates * self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for k in range(self.num_layers):
            d_in = self.input_size if k == 0 else self.num_directions * self.hidden_size
            for d in range(self.num_directions):
                w_ih, _, b_ih, _ = _init.param_names(k, d)
                shapes[w_ih] = (GH, d_in)
                if self.bias:
                    shapes[b_ih] = (GH,)
        return shapes

    def init(self, seed=0, *, like=None, xp=None, dtype=None, device=None, init="uniform"):
        r"""Seeded parameters: same seed, same numbers on every backend.

        Parameters
        ----------
        seed : int, default 0
            Seed of the host-side NumPy generator (see :mod:`portable_rnn.init`).
        like : array, optional
            Take the namespace, dtype and device from this array (e.g. ``x``).
        xp : module, optional
            The library when ``like`` is not given; default NumPy.
        dtype : dtype or {"float32", "float64"}, optional
            Default float32 (or the dtype of ``like``).
        device : device, optional
            Default the library's default device (or the device of ``like``).
        init : {"uniform", "xavier", "orthogonal"}, default "uniform"
            Weight scheme, as :meth:`portable_rnn.layers.GRU.init`: ``"uniform"``
            draws weights and biases from :math:`U(-1/\sqrt{H}, 1/\sqrt{H})`.

        Returns
        -------
        dict of str to array
            Keys and shapes of :meth:`param_shapes`.
        """
        seed = _init.check_seed(seed)
        if init not in _init.SCHEMES:
            raise ValueError(f"init must be one of {list(_init.SCHEMES)}, got {init!r}")
        xp, dtype, device = resolve_target(like, xp, dtype, device)
        host = _init.draw(
            n_gates=self.n_gates, input_size=self.input_size, hidden_size=self.hidden_size,
            num_layers=self.num_layers, num_directions=self.num_directions, bias=self.bias,
            seed=seed, scheme=init,
        )  # it draws recurrent weights too, which these layers have not: they are left out
        return to_namespace({name: host[name] for name in self.param_shapes()}, xp, dtype, device)

    # ----------------------------------------------------------- the gates

    def pre_activations(self, W, b, x, xp):
        r"""The pre-activations of every gate block, a tuple of G arrays (..., H), from ``x`` (..., D).

        :math:`u_g = x W_g^T + b_g`, one contraction per block: each block is
        then a contiguous array, and the elementwise work on it runs at full
        speed (on NumPy about 3x faster than on the strided slices of one
        (..., G*H) product).
        """
        last = (x.ndim - 1,)
        biases = self._gate_blocks(b) if b is not None else (None,) * self.n_gates
        blocks = []
        for W_g, b_g in zip(self._gate_blocks(W), biases):
            u = xp.tensordot(x, W_g, axes=(last, (1,)))
            blocks.append(u if b_g is None else u + b_g)
        return tuple(blocks)

    def _gate_blocks(self, v):
        """``v`` (G*H, ...) cut along its first axis into the G gate blocks (H, ...), views."""
        H = self.hidden_size
        return tuple(v[g * H : (g + 1) * H, ...] for g in range(self.n_gates))

    def gates_of(self, pre, xp):
        r"""``(a, b, gates)`` from the pre-activations ``pre`` (a tuple of G arrays (..., H)): the
        recurrence's coefficients (..., H) and what :meth:`_pre_gradient` reads (the ``gates`` of :class:`Kept`)."""
        raise NotImplementedError

    def coefficients(self, pre, xp):
        r"""The recurrence's :math:`(a, b)`, each (..., H), from the pre-activations ``pre`` (..., G*H)."""
        H = self.hidden_size
        a, b, _ = self.gates_of(tuple(pre[..., g * H : (g + 1) * H] for g in range(self.n_gates)), xp)
        return a, b

    def _pre_gradient(self, pre, gates, d_gate, db, xp):
        r"""The gradients of the pre-activation blocks, a tuple like ``pre``, from :math:`\partial b` and
        ``d_gate`` :math:`= \partial b \odot u_{\tilde h} - \partial a` (each (..., H))."""
        raise NotImplementedError

    # ----------------------------------------------------------- checks

    def _weights(self, params, k, d):
        w_ih, _, b_ih, _ = _init.param_names(k, d)
        return params[w_ih], (params[b_ih] if self.bias else None)

    def _out_shape(self, T, N):
        F = self.num_directions * self.hidden_size
        return (N, T, F) if self.batch_first else (T, N, F)

    def _check_forward(self, params, x, state, lengths, dropout_masks):
        """Check :meth:`forward`'s arguments; return ``(xp, dtype, device)``."""
        check_params("params", params, self.param_shapes(), owner=self)
        if dropout_masks is not None and (not isinstance(dropout_masks, (tuple, list)) or len(dropout_masks)):
            raise ValueError(f"dropout_masks must be None or (): {type(self).__name__} has no dropout")
        named = {"x": x, "state": state, **{f"params['{k}']": v for k, v in params.items()}}
        xp = namespace_of(**named, lengths=lengths)
        dtype = check_floating(xp, **named)
        dev = check_same_device(**named, lengths=lengths)
        if dev is None:
            dev = _device_or_none(x)
        D, LD = self.input_size, self.num_layers * self.num_directions
        layout = "(N, T, D)" if self.batch_first else "(T, N, D)"
        check_shape("x", x, (None, None, D), f"{layout} with D = input_size = {D}")
        time_axis = 1 if self.batch_first else 0
        check_time_steps("x", x, axis=time_axis)
        T, N = x.shape[time_axis], x.shape[1 - time_axis]
        if state is not None:
            check_shape("state", state, (LD, N, self.hidden_size), f"(num_layers * dirs, N, H) = ({LD}, {N}, "
                                                                    f"{self.hidden_size})")
        if lengths is not None:
            _check_lengths(lengths, T, N, xp)
        return xp, dtype, dev

    def _check_backward(self, params, tape, d_out, d_state):
        """Check :meth:`backward`'s arguments; return ``xp``."""
        check_params("params", params, self.param_shapes(), owner=self)
        if tape is None:
            raise TypeError("tape is None: forward(retain='none') keeps nothing to differentiate; "
                            "run forward() with retain='full' or retain='checkpoint'")
        made_by = getattr(tape, "spec", None)
        if not (isinstance(tape, MinimalTape) and made_by is not None):
            raise TypeError(f"tape must be the MinimalTape returned by forward() of this spec, "
                            f"got {type(tape).__name__}")
        if made_by != self:
            raise ValueError(f"tape was made by {made_by!r}, not by this spec {self!r}")
        x0 = tape.inputs[0]
        named = {"tape": x0, "d_out": d_out, "d_state": d_state,
                 **{f"params['{k}']": v for k, v in params.items()}}
        xp = namespace_of(**named)
        check_floating(xp, **named)
        check_same_device(**named)
        T, N = x0.shape[0], x0.shape[1]
        if d_out is not None:
            check_shape("d_out", d_out, self._out_shape(T, N), "the shape of out from forward()")
        if d_state is not None:
            check_shape("d_state", d_state, (self.num_layers * self.num_directions, N, self.hidden_size),
                        "the shape of the final state from forward()")
        return xp

    # ----------------------------------------------------------- one layer and direction

    def _run(self, W, b, x, h_in, mask, xp):
        """Pre-activations (G arrays (T, N, H)), states (T, N, H) and gates of one layer and direction over ``x``
        (T, N, D)."""
        pre = self.pre_activations(W, b, x, xp)
        a, bb, gates = self.gates_of(pre, xp)
        return pre, linear_scan(a, bb, h_in, mask=mask, method=self.scan), gates

    def _run_segments(self, W, b, x, h0, mask, k, xp):
        """The states (T, N, H) of :meth:`_run`, segment by segment of ``k`` steps: a scratch of one segment."""

        def segment(h_in, inputs):
            (x_s, mask_s), _ = inputs
            _, h_s, _ = self._run(W, b, x_s, h_in, mask_s, xp)
            return h_s[-1, ...], (h_s, None)

        _, (h, _) = _segments(segment, h0, (x, mask), None, k, xp)
        return h

    def _backward_run(self, W, pre, gates, h_prev, x, mask, keep, d_out, d_final, xp):
        r"""Gradients of one run of :meth:`_run` (a sequence or a segment).

        ``gates`` are those of :meth:`gates_of`, ``h_prev`` (T, N, H) the state
        entering each step; ``d_out`` (T, N, H) is the gradient of each
        :math:`h_t` from above (zero at padding), ``d_final`` (N, H) that of the
        last state, carried in from after the run (already scaled by
        truncation's factor); ``keep`` the per-step factor of truncated BPTT or
        None. The reverse recurrence (:func:`~portable_rnn.linear_scan.linear_scan_backward`'s
        :math:`\lambda`, with ``d_final`` as its starting carry) gives
        :math:`\partial b = \lambda` and :math:`\partial a = \lambda \odot h_{t-1}`,
        both zero at padded steps, and the gate chain rule reads
        :math:`\partial b \odot u_{\tilde h} - \partial a = \lambda \odot (u_{\tilde h} - h_{t-1})`.
        Returns ``(dh_in, dW, db, dx)``.
        """
        a = _masked_a(gates[0], mask)
        lam, dh_in = _adjoint(a, d_out, d_final, keep=_whole_last_step(keep, xp), method=self.scan)
        if mask is not None:
            lam = mask * lam
        d_pre = self._pre_gradient(pre, gates, lam * (pre[-1] - h_prev), lam, xp)  # zero at padded steps
        steps_and_batch = ((0, 1), (0, 1))
        dW = xp.concat([xp.tensordot(d_u, x, axes=steps_and_batch) for d_u in d_pre], axis=0)
        db = xp.concat([xp.sum(d_u, axis=(0, 1)) for d_u in d_pre], axis=0)
        dx = None
        for d_u, W_g in zip(d_pre, self._gate_blocks(W)):
            dx_g = xp.tensordot(d_u, W_g, axes=((2,), (0,)))
            dx = dx_g if dx is None else dx + dx_g
        return dh_in, dW, db, dx

    def _backward_checkpointed(self, W, b, x, checkpoints, mask, keep, d_out, d_final, xp):
        """:meth:`_backward_run` over segments, last first, each recomputed from its checkpoint."""
        k = -(-x.shape[0] // checkpoints.shape[0])  # ceil(T / S): see segment_length

        def segment(carry, inputs):
            d_next, dW, db = carry
            (x_s, mask_s, keep_s, d_out_s), h_in = inputs
            pre_s, h_s, gates_s = self._run(W, b, x_s, h_in, mask_s, xp)
            h_prev = xp.concat([xp.expand_dims(h_in, axis=0), h_s[:-1, ...]], axis=0)
            # the gradient entering the segment's last step from the next segment, cut by truncation
            d_last = d_next if keep_s is None else keep_s[-1, ...] * d_next
            dh_in, dW_s, db_s, dx_s = self._backward_run(W, pre_s, gates_s, h_prev, x_s, mask_s, keep_s, d_out_s,
                                                         d_last, xp)
            return (dh_in, dW + dW_s, db + db_s), (dx_s, None)

        GH = W.shape[0]
        carry = (d_final, xp.zeros_like(W), xp.zeros((GH,), dtype=W.dtype, device=device(W)))
        (dh0, dW, db), (dx, _) = _segments(segment, carry, (x, mask, keep, d_out), checkpoints, k, xp,
                                           reverse=True)
        return dh0, dW, db, dx

    # ----------------------------------------------------------- forward

    def forward(self, params, x, state=None, lengths=None, *, dropout_masks=None, retain="full",
                checkpoint_every=None, tape=None):
        r"""Run the stacked layer over a batch of sequences.

        Parameters
        ----------
        params : dict of str to array
            As returned by :meth:`init`.
        x : array (T, N, D), or (N, T, D) when ``batch_first``
        state : array (L*dirs, N, H), optional
            Initial state ``h_0``, index ``layer * dirs + direction``; ``None`` is zeros.
        lengths : integer array (N,), optional
            Valid steps of each sequence (right padding), ``1 <= lengths <= T``,
            checked where the values are concrete (as :meth:`portable_rnn.layers.GRU.forward`).
        dropout_masks : None or (), keyword-only
            These layers have no dropout; accepted so that
            :func:`portable_rnn.jax.apply` can call every spec alike.
        retain : {"full", "checkpoint", "none"}, keyword-only
            What each layer keeps for :meth:`backward`: its input, every
            step's pre-activations (G*H numbers), state and gate values
            (2H numbers for minGRU, 4H for minLSTM: :class:`Kept`)
            (``"full"``); its
            input and the states entering segments of at most
            ``checkpoint_every`` steps (``"checkpoint"``: the backward
            recomputes one segment at a time, so apart from the inputs the
            tape grows like sqrt(T)); or nothing (``"none"``: the tape is
            ``None``). Either way the forward runs each layer over the whole
            sequence at once, the parallel scan's best case.
        checkpoint_every : int, keyword-only, optional
            With ``"checkpoint"``, steps per segment at most (default
            ceil(sqrt(T))). With ``"none"``, the forward runs segment by
            segment of at most that many steps, a scratch of one segment
            instead of the sequence's (default: the whole sequence at once).
        tape : {"full", "checkpoint", "none"}, keyword-only, optional
            ``retain``'s deprecated spelling.

        Returns
        -------
        out : array (T, N, dirs*H), or (N, T, dirs*H) when ``batch_first``
            The last layer's states (forward direction first), zero at padded steps.
        state : array (L*dirs, N, H)
            The state after each sequence's last valid step (for the reverse
            direction: after it has consumed step 0).
        tape : MinimalTape or None
            For :meth:`backward`; ``None`` for ``retain="none"``.
        """
        retain, checkpoint_every = check_retain(retain, checkpoint_every, tape=tape)
        xp, dtype, dev = self._check_forward(params, x, state, lengths, dropout_masks)
        if self.batch_first:
            x = xp.permute_dims(x, (1, 0, 2))
        T, mask, index = x.shape[0], None, None
        if lengths is not None:
            mask, index = _length_maps(lengths, T, dtype, dev, xp)
            x = xp.where(mask > 0, x, xp.zeros((), dtype=dtype, device=dev))  # NaN on the padding cannot leak
        states0 = self._initial_states(x, state, dtype, dev, xp)

        layer_in, inputs, finals, kept = x, [], [], []
        for k in range(self.num_layers):
            outs, kept_k = [], []
            for d in range(self.num_directions):
                W, b = self._weights(params, k, d)
                x_d = layer_in if d == 0 else _reverse_time(layer_in, index, xp)
                h, kept_d = self._forward_one(W, b, x_d, states0[k * self.num_directions + d], mask, retain,
                                              checkpoint_every, xp)
                kept_k.append(kept_d)
                out_d = h if mask is None else h * mask
                outs.append(out_d if d == 0 else _reverse_time(out_d, index, xp))
                finals.append(h[-1, ...])  # frozen after the last valid step
            inputs.append(layer_in)
            kept.append(tuple(kept_k))
            layer_in = outs[0] if len(outs) == 1 else xp.concat(outs, axis=-1)

        out = xp.permute_dims(layer_in, (1, 0, 2)) if self.batch_first else layer_in
        final = xp.stack(finals, axis=0)
        if retain == "none":
            return out, final, None
        s0 = xp.stack(states0, axis=0)
        return out, final, _tape_type(self)(tuple(inputs), s0, tuple(kept), mask, index)

    def _forward_one(self, W, b, x, h_in, mask, retain, checkpoint_every, xp):
        """States (T, N, H) of one layer and direction, and what its tape keeps (None for ``"none"``)."""
        T = x.shape[0]
        if retain == "none" and checkpoint_every is not None:
            return self._run_segments(W, b, x, h_in, mask, segment_length(T, checkpoint_every), xp), None
        pre, h, gates = self._run(W, b, x, h_in, mask, xp)
        if retain == "none":
            return h, None
        if retain == "full":  # the tape's states are a copy: writing into ``out`` cannot change the backward
            return h, Kept(pre, xp.concat([xp.expand_dims(h_in, axis=0), h], axis=0), gates)
        k = segment_length(T, checkpoint_every)  # the states entering segments 0, 1, ...: h0, h[k-1], h[2k-1], ...
        return h, Checkpoints(xp.concat([xp.expand_dims(h_in, axis=0), h[k - 1 : T - 1 : k, ...]], axis=0))

    def _initial_states(self, x, state, dtype, dev, xp):
        """The initial state of every layer and direction, (N, H) each: from ``state``, or zeros."""
        if state is not None:
            return [state[i, ...] for i in range(state.shape[0])]
        # made from x, so that they have x's placement (a batch-sharded JAX x: sharded zeros)
        zeros = xp.zeros_like(x[0, :, :1]) + xp.zeros((1, self.hidden_size), dtype=dtype, device=dev)
        return [zeros] * (self.num_layers * self.num_directions)

    # ----------------------------------------------------------- backward

    def backward(self, params, tape, d_out, d_state=None, truncate=None):
        r"""Backpropagation through time through every layer and direction, by hand.

        Layers are visited top-down; per layer and direction the gradient of
        its states (from ``d_out`` or the layer above, plus ``d_state`` at the
        last step) goes through :func:`~portable_rnn.linear_scan.linear_scan_backward`
        and the gate chain rule to the pre-activations, whose contractions give
        the weight gradients and the gradient of the layer's input.

        Parameters
        ----------
        params : dict of str to array
            The parameters used in :meth:`forward`.
        tape : MinimalTape
            From :meth:`forward` with ``retain="full"`` or ``"checkpoint"``.
        d_out : array shaped like ``out``, or None
            Gradient of the loss with respect to ``out``; ``None`` is zero.
            Entries at padded steps are ignored.
        d_state : array (L*dirs, N, H), optional
            Gradient with respect to the final state; ``None`` is zero.
        truncate : int, optional
            Truncated BPTT, as :meth:`portable_rnn.layers.GRU.backward`: no
            gradient crosses the recurrence between windows ``[0, k), [k, 2k), ...``
            of each direction's own pass (for the reverse direction with
            lengths, counted from each sequence's last valid step); gradients
            still flow between layers at every step. ``None`` is full BPTT.

        Returns
        -------
        grads : dict of str to array
            Same keys and shapes as ``params``.
        dx : array shaped like ``x``
        dstate0 : array (L*dirs, N, H)
            Gradient with respect to the initial state (the zero state when
            :meth:`forward` had none).
        """
        truncate = check_truncate(truncate)
        xp = self._check_backward(params, tape, d_out, d_state)
        inputs, state0, kept, mask, index = tape
        T, dirs, H = inputs[0].shape[0], self.num_directions, self.hidden_size
        x0 = inputs[0]
        keep = window_keep(T, truncate, mask, dtype=x0.dtype, device=device(x0), xp=xp)
        if keep is not None and mask is None:
            keep = xp.reshape(keep, (T, 1, 1))
        d_layer = d_out
        if d_out is None:
            d_layer = xp.zeros(self._out_shape(T, x0.shape[1]), dtype=x0.dtype, device=device(x0))
        if self.batch_first:
            d_layer = xp.permute_dims(d_layer, (1, 0, 2))
        if mask is not None:  # out is constant at padded steps: whatever comes from above is ignored
            d_layer = xp.where(mask > 0, d_layer, xp.zeros((), dtype=x0.dtype, device=device(x0)))

        grads: dict = {}
        dstate0: list = [None] * (self.num_layers * dirs)
        for k in reversed(range(self.num_layers)):
            d_in = None
            for d in range(dirs):
                W, b = self._weights(params, k, d)
                i = k * dirs + d
                x_d = inputs[k] if d == 0 else _reverse_time(inputs[k], index, xp)
                d_out_d = d_layer[..., d * H : (d + 1) * H] if dirs > 1 else d_layer
                if d == 1:
                    d_out_d = _reverse_time(d_out_d, index, xp)
                d_final = xp.zeros_like(state0[i, ...]) if d_state is None else d_state[i, ...]
                if isinstance(kept[k][d], Checkpoints):
                    g = self._backward_checkpointed(W, b, x_d, kept[k][d].h, mask, keep, d_out_d, d_final, xp)
                else:
                    pre, h, gates = kept[k][d]
                    g = self._backward_run(W, pre, gates, h[:-1, ...], x_d, mask, keep, d_out_d, d_final, xp)
                dstate0[i], dW, db, dx_d = g
                w_ih, _, b_ih, _ = _init.param_names(k, d)
                grads[w_ih] = dW
                if self.bias:
                    grads[b_ih] = db
                dx_d = dx_d if d == 0 else _reverse_time(dx_d, index, xp)
                d_in = dx_d if d_in is None else d_in + dx_d
            d_layer = d_in

        dx = xp.permute_dims(d_layer, (1, 0, 2)) if self.batch_first else d_layer
        grads = {name: grads[name] for name in self.param_shapes()}
        return grads, dx, xp.stack(dstate0, axis=0)

    # ----------------------------------------------------------- one token

    def step(self, params, x_t, state=None):
        r"""One time step of every layer, for generation token by token.

        Each layer runs :math:`h_t = a_t \odot h_{t-1} + b_t` once; a sequence
        of calls gives what :meth:`forward` gives step by step.

        Parameters
        ----------
        params : dict of str to array
        x_t : array (N, D)
            The input at this step.
        state : array (L, N, H), optional
            The state after the previous step; ``None`` is zeros.

        Returns
        -------
        out_t : array (N, H)
            The last layer's new state.
        state : array (L, N, H)
        """
        if self.bidirectional:
            raise ValueError("step runs forward in time, one token at a time; a bidirectional layer "
                             "needs the whole sequence: use forward()")
        check_params("params", params, self.param_shapes(), owner=self)
        named = {"x_t": x_t, "state": state, **{f"params['{k}']": v for k, v in params.items()}}
        xp = namespace_of(**named)
        dtype = check_floating(xp, **named)
        check_same_device(**named)
        check_shape("x_t", x_t, (None, self.input_size), f"(N, D) with D = input_size = {self.input_size}")
        N, L, H = x_t.shape[0], self.num_layers, self.hidden_size
        if state is not None:
            check_shape("state", state, (L, N, H), f"(num_layers, N, H) = ({L}, {N}, {H})")
        layer_in, new = x_t, []
        for k in range(L):
            W, b = self._weights(params, k, 0)
            a, bb, _ = self.gates_of(self.pre_activations(W, b, layer_in, xp), xp)
            h_prev = xp.zeros((N, H), dtype=dtype, device=device(x_t)) if state is None else state[k, ...]
            layer_in = a * h_prev + bb
            new.append(layer_in)
        return layer_in, xp.stack(new, axis=0)


def _segments(fn, carry, step_xs, segment_xs, k, xp, reverse=False):
    """Run ``fn`` over consecutive segments of ``k`` steps: a loop over full segments, then the short tail.

    ``fn(carry, (step_xs_s, segment_xs_s)) -> (carry, (step_ys_s, None))``:
    ``step_xs`` (a tuple of arrays (T, ...) or None) are cut into segments and
    the ``step_ys`` (one array) joined back into (T, ...); ``segment_xs`` is
    an array (S, ...) of one entry per segment, or None. ``reverse`` runs
    from the last segment (the tail) to the first. Only the time axis is
    reshaped: a batch sharding is untouched.
    """
    T = next(a.shape[0] for a in step_xs if a is not None)
    n_full, tail = divmod(T, k)
    head_len = n_full * k

    def head(a):
        return None if a is None else xp.reshape(a[:head_len, ...], (n_full, k) + tuple(a.shape[1:]))

    def run_tail(carry):
        xs = tuple(None if a is None else a[head_len:, ...] for a in step_xs)
        return fn(carry, (xs, None if segment_xs is None else segment_xs[n_full, ...]))

    tail_ys = None
    if tail and reverse:
        carry, (tail_ys, _) = run_tail(carry)
    head_xs = (tuple(head(a) for a in step_xs), None if segment_xs is None else segment_xs[:n_full, ...])
    if n_full:
        carry, (ys, _) = time_loop(fn, carry, head_xs, xp=xp, reverse=reverse)
        ys = xp.reshape(ys, (head_len,) + tuple(ys.shape[2:]))
    if tail and not reverse:
        carry, (tail_ys, _) = run_tail(carry)
    if not n_full:
        return carry, (tail_ys, None)
    return carry, (ys if tail_ys is None else xp.concat([ys, tail_ys], axis=0), None)


@dataclass(frozen=True)
class MinGRU(_Minimal):
    r"""Stacked minimal GRU (Feng et al., 2024): a GRU whose gates read only the input.

    .. math::

        z_t = \sigma(x_t W_z^T + b_z), \qquad \tilde h_t = x_t W_h^T + b_h, \qquad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    ``weight_ih_l{k}`` (2H, D_k) stacks :math:`[W_z; W_h]` and ``bias_ih_l{k}``
    (2H,) :math:`[b_z; b_h]`. :math:`1 - z_t` and :math:`z_t` come from one
    exponential (module docstring), each exact relative to itself: near 1 and near 0.

    Parameters
    ----------
    input_size, hidden_size : int
        D and H.
    num_layers : int, default 1
        Layer ``k > 0`` reads the concatenated outputs of both directions of layer ``k - 1``.
    bias, batch_first, bidirectional : bool, keyword-only
        Defaults ``True, False, False``.
    scan : {"parallel", "sequential"}, keyword-only, default "parallel"
        How the recurrence runs (:func:`portable_rnn.linear_scan.linear_scan`):
        the chunked parallel scan, or the T steps of the definition (the
        reference). The same numbers to rounding.

    Methods :meth:`init`, :meth:`forward`, :meth:`backward`, :meth:`step`,
    :meth:`param_shapes`; see the module docstring for shapes and lengths.

    Examples
    --------
    >>> import numpy as np
    >>> spec = MinGRU(3, 4)
    >>> x = np.zeros((5, 2, 3))
    >>> out, h_n, tape = spec.forward(spec.init(like=x), x)
    >>> out.shape, h_n.shape
    ((5, 2, 4), (1, 2, 4))
    """

    gates: ClassVar[tuple] = ("z", "h~")
    mode: ClassVar[str] = "mingru"

    def gates_of(self, pre, xp):
        r""":math:`a = 1 - z = 1/(1 + c)`, :math:`b = z \odot u_{\tilde h}` with :math:`z = c\,a`,
        :math:`c = e^{\min(u_z, L)}` (module docstring); the gates kept are :math:`(a, z)`."""
        u_z, u_h = pre
        c = xp.exp(xp.clip(u_z, max=_exp_limit(u_z.dtype, xp)))
        a = 1 / (1 + c)
        z = c * a
        return a, z * u_h, (a, z)

    def _pre_gradient(self, pre, gates, d_gate, db, xp):
        r"""Through :math:`a = 1 - z`, :math:`b = z \odot \tilde h`.

        :math:`\partial u_z = (\partial b \odot \tilde h - \partial a) \odot z (1 - z)`,
        :math:`\partial \tilde h = \partial b \odot z`.
        """
        a, z = gates
        return d_gate * a * z, db * z


@dataclass(frozen=True)
class MinLSTM(_Minimal):
    r"""Stacked minimal LSTM (Feng et al., 2024): normalised forget and input gates that read only the input.

    .. math::

        f_t = \sigma(x_t W_f^T + b_f), \quad i_t = \sigma(x_t W_i^T + b_i), \quad
        \tilde h_t = x_t W_h^T + b_h \\
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \qquad
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    ``weight_ih_l{k}`` (3H, D_k) stacks :math:`[W_f; W_i; W_h]` and
    ``bias_ih_l{k}`` (3H,) :math:`[b_f; b_i; b_h]`. The normalised gates are
    computed in the closed form of the module docstring,
    :math:`f' = (E + Q)/S`, :math:`i' = (E + P)/S`: finite and exact for
    pre-activations of any size. The state is h alone
    (no separate cell state).

    Parameters
    ----------
    input_size, hidden_size : int
    num_layers : int, default 1
    bias, batch_first, bidirectional : bool, keyword-only
    scan : {"parallel", "sequential"}, keyword-only, default "parallel"

    Examples
    --------
    >>> import numpy as np
    >>> spec = MinLSTM(3, 4, bidirectional=True)
    >>> x = np.zeros((5, 2, 3))
    >>> out, h_n, tape = spec.forward(spec.init(like=x), x)
    >>> out.shape, h_n.shape
    ((5, 2, 8), (2, 2, 4))
    """

    gates: ClassVar[tuple] = ("f", "i", "h~")
    mode: ClassVar[str] = "minlstm"

    def gates_of(self, pre, xp):
        r""":math:`a = f'`, :math:`b = i' \odot u_{\tilde h}`, in the closed form of the module docstring.

        The gates kept are :math:`(f', i', -P/S, Q/S)` with :math:`S = (E + Q) + (E + P)`.
        """
        u_f, u_i, u_h = pre
        m = xp.clip(xp.minimum(u_f, u_i), max=0.0)
        P, Q, E = xp.exp(m - u_f), xp.exp(m - u_i), xp.exp(m)
        num_f, num_i = E + Q, E + P
        r = 1 / (num_f + num_i)
        f_n, i_n = num_f * r, num_i * r
        return f_n, i_n * u_h, (f_n, i_n, P * (-r), Q * r)

    def _pre_gradient(self, pre, gates, d_gate, db, xp):
        r"""Through :math:`i' = \sigma(w)`, :math:`f' = 1 - i'`, :math:`b = i' \odot \tilde h`, :math:`w = \log(i/f)`.

        With :math:`\partial w = (\partial b \odot \tilde h - \partial a) \odot i' f'`,
        :math:`\partial u_f = -\partial w \odot \sigma(-u_f) = -(\partial b \odot \tilde h - \partial a) \odot f' P/S`
        (as :math:`i' \sigma(-u_f) = P/S`),
        :math:`\partial u_i = \partial w \odot \sigma(-u_i) = (\partial b \odot \tilde h - \partial a) \odot i' Q/S`
        (as :math:`f' \sigma(-u_i) = Q/S`), and :math:`\partial \tilde h = \partial b \odot i'`.
        """
        f_n, i_n, minus_p_s, q_s = gates
        return d_gate * f_n * minus_p_s, d_gate * i_n * q_s, db * i_n
