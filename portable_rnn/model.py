r"""A character (or any token) language model: embedding, recurrent layers, affine, softmax.

.. math::

    e_t = E_{x_t}, \qquad
    h_t = \mathrm{RNN}(e_t, h_{t-1}), \qquad
    s_t = h_t W^T + b, \qquad
    L = -\frac{1}{NT} \sum_{n,t} \log \mathrm{softmax}(s_{n,t})_{y_{n,t}}

:class:`CharModel` is a frozen (hashable) spec like the layers of
:mod:`portable_rnn.layers`: it holds sizes only. Parameters are one flat dict
whose names are those of the ``state_dict()`` of the PyTorch module

.. code-block:: python

    class CharModel(torch.nn.Module):           # embedding -> rnn -> decoder
        def __init__(self, V, E, H, L):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, E)
            self.rnn = torch.nn.LSTM(E, H, L)        # or GRU, RNN, portable_rnn.torch.MinGRU, MinLSTM
            self.decoder = torch.nn.Linear(H, V)

``embedding.weight`` (V, E), ``rnn.weight_ih_l0`` ... (see
:mod:`portable_rnn.layers`), ``decoder.weight`` (V, H), ``decoder.bias`` (V,),
so ``torch_module.load_state_dict({k: torch.as_tensor(v) ...})`` takes them as
they are.

:meth:`CharModel.loss_and_grads` runs one forward and one hand-written backward
through the whole model, reusing the CS231n pieces
(:func:`~portable_rnn.cs231n.word_embedding_forward`,
:func:`~portable_rnn.cs231n.temporal_affine_forward` and their backwards),
the stacked layer and :func:`~portable_rnn.losses.softmax_cross_entropy`.
Internally everything is time-major (T, N, ...); only the integer token
matrix is transposed.

Like the rest of the core, everything but :meth:`CharModel.sample` takes its
namespace from its inputs, creates arrays with explicit dtype and device,
never writes into an input, never copies to the host, and is
``jax.jit``-able (close over the spec: it is hashable). Token values are not
range-checked (that would need a host copy); an index outside ``[0, V)``
gives a zero embedding gradient and a zero one-hot target.
"""

from __future__ import annotations

import functools
import inspect
import math
import random
from dataclasses import dataclass

from array_api_compat import device as device_of
from array_api_compat import is_jax_namespace

from . import init as _init
from .backends import resolve_dtype, resolve_namespace, to_host, to_namespace
from ._validation import (check_int, check_integer_dtype, check_params, check_real, check_same_device, check_shape, check_retain,
                          namespace_of)
from .dense import (
    temporal_affine_backward,
    temporal_affine_forward,
    word_embedding_backward,
    word_embedding_forward,
)
from .layers import LAYERS
from .losses import softmax_cross_entropy
from .minimal import MinGRU, MinLSTM

__all__ = ["CharModel", "MODES", "VARIANTS"]

#: The recurrent layer class of each ``mode`` (``portable-rnn train --cell``): the engine's
#: cells (:data:`portable_rnn.layers.LAYERS`: ``"rnn"``, ``"lstm"``, ``"gru"``) and the
#: minimal RNNs (``"mingru"``, ``"minlstm"``: :class:`~portable_rnn.minimal.MinGRU`,
#: :class:`~portable_rnn.minimal.MinLSTM`).
MODES = {**LAYERS, **{cls.mode: cls for cls in (MinGRU, MinLSTM)}}

#: The options of the recurrent layer a :class:`CharModel` passes on, with their defaults
#: (the plain layer): the variants of :mod:`portable_rnn.layers` and their regularisers.
VARIANTS = {"layer_norm": False, "peephole": False, "weight_drop": 0.0, "recurrent_dropout": 0.0, "zoneout": 0.0}

_EMBED = "embedding.weight"
_RNN = "rnn."
_W, _B = "decoder.weight", "decoder.bias"


def _check_tokens(xp, name, tokens, shape, meaning):
    check_integer_dtype(xp, name, tokens, "token indices")
    check_shape(name, tokens, shape, meaning)


@dataclass(frozen=True)
class CharModel:
    r"""Embedding, stacked RNN/LSTM/GRU (or minimal GRU/LSTM) and a linear decoder over a vocabulary.

    Parameters
    ----------
    vocab_size : int
        V, the number of distinct tokens (characters).
    hidden_size : int, default 128
        H.
    num_layers : int, default 1
        Stacked recurrent layers (unidirectional: a language model only looks back).
    mode : {"lstm", "gru", "rnn", "mingru", "minlstm"}, default "lstm"
        The recurrent layer (a key of :data:`MODES`); ``"rnn"`` is the
        Elman RNN with tanh, ``"mingru"`` and ``"minlstm"`` the minimal RNNs
        of :mod:`portable_rnn.minimal` (gates from the input alone, the
        recurrence a linear scan). :attr:`cell` describes the step.
    embed_size : int, default 32
        E, the width of the token embedding.
    layer_norm, peephole : bool, default False
        The layer-normalised LSTM or GRU, the LSTM with peepholes (see :class:`~portable_rnn.layers.LSTM`).
    weight_drop, recurrent_dropout, zoneout : float in [0, 1), default 0.0
        The recurrent layer's regularisers, applied in training mode: by
        :meth:`loss_and_grads` when it is given ``masks`` (:meth:`training_masks`).

    Notes
    -----
    Shapes: tokens and targets (N, T) integer, batch-major; logits (N, T, V);
    the recurrent state is that of :mod:`portable_rnn.layers`: (L, N, H), or
    the pair ``(h, c)`` for LSTM.
    """

    vocab_size: int
    hidden_size: int = 128
    num_layers: int = 1
    mode: str = "lstm"
    embed_size: int = 32
    layer_norm: bool = False
    peephole: bool = False
    weight_drop: float = 0.0
    recurrent_dropout: float = 0.0
    zoneout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "embed_size"):
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        if not isinstance(self.mode, str) or self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        taken = inspect.signature(MODES[self.mode]).parameters
        refused = [name for name in self._options() if name not in taken]
        if refused:
            raise ValueError(f"mode {self.mode!r} has no {', '.join(refused)}")
        self.rnn  # the layer checks its options, each by name

    @property
    def regularised(self) -> bool:
        """Whether the layer has a regulariser that acts in training mode (its factors: :meth:`training_masks`)."""
        return bool(self.weight_drop or self.recurrent_dropout or self.zoneout)

    def _options(self) -> dict:
        """The :data:`VARIANTS` that differ from the plain layer."""
        return {name: getattr(self, name) for name, plain in VARIANTS.items() if getattr(self, name) != plain}

    # ----------------------------------------------------------- static facts

    @property
    def rnn(self):
        """The recurrent layer spec (time-major, unidirectional): ``MODES[mode](E, H, L, **options)``."""
        return MODES[self.mode](self.embed_size, self.hidden_size, self.num_layers, **self._options())

    @property
    def cell(self):
        """The per-step cell: its ``states`` name the parts of the recurrent state.

        A cell of :mod:`portable_rnn.engine.cells`, or for the minimal RNNs a
        :class:`~portable_rnn.minimal.MinimalCell`.
        """
        return self.rnn.cell

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the parameters, in ``state_dict`` order.

        Returns
        -------
        dict of str to tuple of int
            ``embedding.weight`` (V, E), ``rnn.*`` (the layer's names),
            ``decoder.weight`` (V, H), ``decoder.bias`` (V,).
        """
        V, E, H = self.vocab_size, self.embed_size, self.hidden_size
        shapes: dict[str, tuple[int, ...]] = {_EMBED: (V, E)}
        shapes.update({_RNN + k: s for k, s in self.rnn.param_shapes().items()})
        shapes[_W], shapes[_B] = (V, H), (V,)
        return shapes

    # ----------------------------------------------------------- init

    def init(self, seed=0, *, xp=None, dtype="float32", device=None):
        r"""Seeded parameters: the same numbers on every backend.

        All numbers are drawn on the host, in float64, then converted by
        :func:`portable_rnn.backends.to_namespace` (``xp.asarray(..., dtype=dtype,
        device=device)``; it refuses float64 that JAX made float32 without x64,
        with :class:`~portable_rnn.backends.BackendError`). The recurrent layer
        uses its own :meth:`~portable_rnn.layers.LSTM.init` (PyTorch's
        :math:`U(-1/\sqrt H, 1/\sqrt H)`, NumPy's PCG64 seeded with ``seed``);
        the embedding (:math:`\mathcal N(0, 1)`, as ``torch.nn.Embedding``)
        and the decoder (:math:`U(-1/\sqrt H, 1/\sqrt H)`, as
        ``torch.nn.Linear``) come from Python's :class:`random.Random` seeded
        with ``seed``, in that order.

        Parameters
        ----------
        seed : int, default 0
        xp : module, optional
            ``numpy``, ``jax.numpy``, ``torch``, ``cupy``, ``array_api_strict``
            or an array-api-compat namespace; default NumPy.
        dtype : {"float32", "float64"} or dtype, default "float32"
        device : device, optional
            Default: the library's default device.

        Returns
        -------
        dict of str to array
            Keys and shapes of :meth:`param_shapes`.
        """
        seed = _init.check_seed(seed)
        rnn = self.rnn.init(seed, xp=xp, dtype=dtype, device=device)
        xp = resolve_namespace(xp)
        dtype = resolve_dtype(xp, dtype)
        rng = random.Random(seed)
        V, E, H = self.vocab_size, self.embed_size, self.hidden_size
        bound = 1.0 / H**0.5

        shapes = {_EMBED: (V, E), _W: (V, H), _B: (V,)}
        draws = {  # in this order: the embedding, then the decoder
            _EMBED: lambda: rng.gauss(0.0, 1.0),
            _W: lambda: rng.uniform(-bound, bound),
            _B: lambda: rng.uniform(-bound, bound),
        }
        host = {k: [draw() for _ in range(math.prod(shapes[k]))] for k, draw in draws.items()}
        # Refuses a dtype the library did not make. ignore: to_namespace's annotation says ndarray;
        # it converts any host sequence (lists here).
        made = to_namespace(host, xp, dtype, device)  # type: ignore[arg-type]
        params = {_EMBED: xp.reshape(made[_EMBED], shapes[_EMBED])}
        params.update({_RNN + k: v for k, v in rnn.items()})
        params[_W] = xp.reshape(made[_W], shapes[_W])
        params[_B] = made[_B]
        return params

    def init_state(self, params, batch_size: int):
        """Zero recurrent state for ``batch_size`` sequences, on the params' namespace, dtype and device.

        Returns
        -------
        array (L, N, H), or the pair ``(h, c)`` of them for LSTM
        """
        batch_size = check_int("batch_size", batch_size)
        xp = namespace_of(**{f"params['{_W}']": params[_W]})
        shape = (self.num_layers, batch_size, self.hidden_size)
        zero = xp.zeros(shape, dtype=params[_W].dtype, device=device_of(params[_W]))
        return self.rnn.state_value((zero,) * self.cell.n_states)

    # ----------------------------------------------------------- checks

    def _check_params(self, params):
        return check_params("params", params, self.param_shapes(), owner=self)[0]

    def _split(self, params):
        return {k[len(_RNN):]: v for k, v in params.items() if k.startswith(_RNN)}

    # ----------------------------------------------------------- forward / backward

    def training_masks(self, seed, params, batch_size: int, seq_len: int) -> dict:
        """The recurrent layer's training-mode factors for one :meth:`loss_and_grads`, drawn from a seed.

        Parameters
        ----------
        seed : int
            The same seed gives the same factors on every backend (draw a new one per step).
        params : dict of str to array
            The factors' library, dtype and device.
        batch_size, seq_len : int
            N and T of the tokens.

        Returns
        -------
        dict
            ``weight_masks``, ``recurrent_masks`` and ``zoneout_masks`` for the
            regularisers the model has (:meth:`portable_rnn.layers.LSTM.forward`'s
            keywords); empty without any.
        """
        masks: dict = {}
        if not self.regularised:  # nothing to draw: no work on the training loop's path
            return masks
        xp = self._check_params(params)
        rnn, seed = self.rnn, _init.check_seed(seed)
        inputs = xp.zeros((check_int("seq_len", seq_len), check_int("batch_size", batch_size), self.embed_size),
                          dtype=params[_W].dtype, device=device_of(params[_W]))  # their layout
        if self.weight_drop:
            masks["weight_masks"] = rnn.weight_drop_masks(seed, self._split(params))
        if self.recurrent_dropout:
            masks["recurrent_masks"] = rnn.recurrent_dropout_masks(seed + 1, inputs)
        if self.zoneout:
            masks["zoneout_masks"] = rnn.zoneout_masks(seed + 2, inputs)
        return masks

    def _forward(self, params, tokens, state, *, xp, retain="none", checkpoint_every=None, masks=None):
        """Tokens (N, T) -> time-major logits (T, N, V), final state, caches.

        The lookup runs on the batch-major tokens: its flattening then keeps
        the batch axis major, so a batch-sharded input needs no gather.
        ``retain`` is the recurrent layer's (``"none"`` unless a backward follows).
        """
        emb, emb_cache = word_embedding_forward(tokens, params[_EMBED])
        out, final, tape = self.rnn.forward(self._split(params), xp.permute_dims(emb, (1, 0, 2)), state,
                                            retain=retain, checkpoint_every=checkpoint_every, **(masks or {}))
        logits, aff_cache = temporal_affine_forward(out, xp.matrix_transpose(params[_W]), params[_B])
        return logits, final, (emb_cache, tape, aff_cache)

    def forward(self, params, tokens, state=None):
        """Logits of the next token at every position.

        Parameters
        ----------
        params : dict of str to array
            From :meth:`init`.
        tokens : integer array (N, T)
        state : array (L, N, H), or a pair ``(h, c)`` for LSTM, optional
            Initial state; ``None`` is zeros.

        Returns
        -------
        logits : array (N, T, V)
            Unnormalised scores; ``logits[n, t]`` predicts ``tokens[n, t + 1]``.
        state : array (L, N, H), or the pair ``(h, c)``
            The state after the last step (pass it to the next call to continue).
        """
        xp = self._check_params(params)
        check_same_device(params=params[_W], tokens=tokens)
        _check_tokens(xp, "tokens", tokens, (None, None), "(N, T) token indices")
        logits, final, _ = self._forward(params, tokens, state, xp=xp)
        return xp.permute_dims(logits, (1, 0, 2)), final

    def loss_and_grads(self, params, tokens, targets, state=None, truncate=None, *, retain="full",
                       checkpoint_every=None, masks=None, tape=None):
        r"""Mean cross-entropy of the next-token predictions and its gradient.

        One forward pass and one backward pass through the whole model:

        .. math::

            \frac{\partial L}{\partial s} \xrightarrow{\text{affine}}
            \frac{\partial L}{\partial h} \xrightarrow{\text{BPTT}}
            \frac{\partial L}{\partial e} \xrightarrow{\text{embedding}}
            \frac{\partial L}{\partial E}

        No gradient flows into ``state`` (the truncation point of truncated
        BPTT across batches: carry ``final_state`` into the next call).

        Parameters
        ----------
        params : dict of str to array
        tokens : integer array (N, T)
            Inputs.
        targets : integer array (N, T)
            The token that follows each input (usually ``tokens`` shifted by one).
        state : array (L, N, H), or a pair ``(h, c)`` for LSTM, optional
            Initial state; ``None`` is zeros.
        truncate : int, optional
            Truncated BPTT inside the sequence: windows of ``truncate`` steps
            (see :meth:`portable_rnn.layers.LSTM.backward`). ``None``: full BPTT.
        retain : {"full", "checkpoint"}, keyword-only
            What the recurrent layers keep between the passes: everything, or
            only the states entering segments of at most ``checkpoint_every``
            steps, recomputed in the backward (memory like sqrt(T) instead of
            T, one more forward pass of work; the same gradients). See
            :meth:`portable_rnn.layers.LSTM.forward`.
        checkpoint_every : int, keyword-only, optional
            Steps per segment with ``retain="checkpoint"``; ``None`` is ceil(sqrt(T)).
        masks : dict, keyword-only, optional
            Training mode of a model with regularisers: the factors of
            :meth:`training_masks`. ``None`` is evaluation mode.
        tape : {"full", "checkpoint"}, keyword-only, optional
            ``retain``'s deprecated spelling.

        Returns
        -------
        loss : 0-d array
            Mean over the N*T predictions, in nats; params' dtype and device.
        grads : dict of str to array
            Same keys and shapes as ``params``.
        final_state : array (L, N, H), or the pair ``(h, c)``
            The state after the last step.
        """
        xp = self._check_params(params)
        check_same_device(params=params[_W], tokens=tokens, targets=targets)
        _check_tokens(xp, "tokens", tokens, (None, None), "(N, T) token indices")
        _check_tokens(xp, "targets", targets, tuple(tokens.shape), "(N, T), the shape of tokens")
        retain, checkpoint_every = check_retain(retain, checkpoint_every, backward_by="loss_and_grads", tape=tape)
        logits, final, (emb_cache, tape, aff_cache) = self._forward(params, tokens, state, xp=xp, retain=retain,
                                                                    checkpoint_every=checkpoint_every, masks=masks)
        loss, dlogits = softmax_cross_entropy(logits, xp.permute_dims(targets, (1, 0)))
        d_out, d_wt, d_b = temporal_affine_backward(dlogits, aff_cache)
        rnn_grads, d_emb, _ = self.rnn.backward(self._split(params), tape, d_out, None, truncate)
        grads = {_EMBED: word_embedding_backward(xp.permute_dims(d_emb, (1, 0, 2)), emb_cache)}
        grads.update({_RNN + k: v for k, v in rnn_grads.items()})
        grads[_W], grads[_B] = xp.matrix_transpose(d_wt), d_b
        return loss, grads, final

    def step(self, params, token, state=None):
        """Feed one token per sequence; the streaming form of :meth:`forward`.

        A layer with a one-token step of its own runs it (the minimal RNNs:
        :meth:`~portable_rnn.minimal.MinGRU.step`, one :math:`a_t h_{t-1} + b_t`
        per layer, not a scan of length one); the others run their forward
        over one step, which is their step.

        Parameters
        ----------
        params : dict of str to array
        token : integer array (N,)
        state : array (L, N, H), or a pair ``(h, c)`` for LSTM, optional
            The state returned by the previous call; ``None`` is zeros.

        Returns
        -------
        logits : array (N, V)
            Scores of the next token.
        state : array (L, N, H), or the pair ``(h, c)``
        """
        xp = self._check_params(params)
        check_same_device(params=params[_W], token=token)
        _check_tokens(xp, "token", token, (None,), "(N,) one token per sequence")
        tokens = xp.reshape(token, (token.shape[0], 1))
        layer_step = getattr(self.rnn, "step", None)
        if layer_step is None:
            logits, final, _ = self._forward(params, tokens, state, xp=xp)
            return logits[0, ...], final
        emb, _ = word_embedding_forward(tokens, params[_EMBED])
        out_t, final = layer_step(self._split(params), emb[:, 0, :], state)
        logits, _ = temporal_affine_forward(xp.expand_dims(out_t, axis=0), xp.matrix_transpose(params[_W]),
                                            params[_B])
        return logits[0, ...], final

    # ----------------------------------------------------------- sampling (host side)

    def sample(self, params, prime, length, temperature=1.0, top_k=None, seed=0):
        r"""Generate ``length`` tokens after ``prime``; seeded and reproducible.

        This is a host-side driver, not core code: after every :meth:`step`
        the logits (one row of V numbers) are copied to the host, and the
        next token is drawn there and copied to the device (two transfers per
        token; arrays without values, such as torch ``meta`` tensors, raise
        ``TypeError``). It is drawn in float64 with NumPy's
        :class:`numpy.random.Generator` (PCG64) seeded with ``seed``, by
        inverting the cumulative distribution at one uniform number per
        token. The same seed therefore gives the same tokens on every run,
        and on every backend up to the rounding of the logits. The state
        stays on the device. Under JAX the step is ``jax.jit``-compiled once
        per spec.

        Parameters
        ----------
        params : dict of str to array
        prime : sequence of int
            At least one token to condition on.
        length : int
            Number of tokens to generate (>= 0).
        temperature : float, default 1.0
            Divides the logits before the softmax; ``0`` picks the most
            likely token every time (greedy).
        top_k : int, optional
            Draw only among the ``top_k`` most likely tokens.
        seed : int, default 0

        Returns
        -------
        list of int
            The generated tokens, without the prime.
        """
        import numpy as np  # host-side sampling only; the core modules never import NumPy

        xp = self._check_params(params)
        prime = [int(t) for t in prime]
        if not prime:
            raise ValueError("prime must hold at least one token")
        bad = [t for t in prime if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prime has tokens outside [0, {self.vocab_size}): {bad[:5]}")
        length = check_int("length", length, minimum=0)
        temperature = check_real("temperature", temperature, 0)
        if top_k is not None:
            top_k = check_int("top_k", top_k)
        seed = _init.check_seed(seed)

        dev = device_of(params[_W])
        forward, step = _compiled(self, xp)
        state = self.init_state(params, 1)  # explicit zeros: one jit signature for every step
        if len(prime) > 1:
            _, state = forward(params, xp.asarray([prime[:-1]], dtype=xp.int32, device=dev), state)
        rng = np.random.default_rng(seed)
        token, generated = prime[-1], []
        for _ in range(length):
            logits, state = step(params, xp.asarray([token], dtype=xp.int32, device=dev), state)
            scores = to_host(logits, "logits")[0].astype(np.float64)
            token = _draw(scores, temperature, top_k, rng, np)
            generated.append(token)
        return generated


def _draw(scores, temperature, top_k, rng, np):
    """One token from host logits (V,) in float64 by inverse CDF."""
    if temperature == 0:
        return int(np.argmax(scores))
    with np.errstate(over="ignore"):  # a tiny temperature sends the unlikely scores to -inf: fine
        z = (scores - np.max(scores)) / temperature
    if top_k is not None and top_k < z.shape[0]:
        kth = np.sort(z)[-top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - np.max(z))
    cdf = np.cumsum(p)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), z.shape[0] - 1))


@functools.lru_cache(maxsize=16)
def _jitted(spec):
    import jax

    return jax.jit(spec.forward), jax.jit(spec.step)


def _compiled(spec, xp):
    """``(forward, step)`` of ``spec``: ``jax.jit``-compiled under JAX, else the methods."""
    if is_jax_namespace(xp):
        return _jitted(spec)
    return spec.forward, spec.step

