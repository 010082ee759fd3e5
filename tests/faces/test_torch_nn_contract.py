"""The drop-ins against ``torch.nn``'s own contract: PyTorch's RNN tests of ``test/test_nn.py``
that run on a CPU, re-written as pairs (the drop-in must behave as ``torch.nn`` does: same
exception type and key words of the message, same numbers to 1e-10 in float64), and
regression tests of the drop-ins' own contract.

Covered from ``test/test_nn.py`` (our own code checking the same facts):

* ``test_rnn_args_check``, ``test_projections_lstm_args_check``: wrong input size, input batch,
  hidden batch, hidden size, number of hidden layers (and ``hidden[0]``/``hidden[1]`` for LSTM,
  with and without ``proj_size``) raise ``RuntimeError`` with ``torch.nn``'s message.
* ``test_projections_errors_on_gru_and_rnn``; ``proj_size`` range checks of ``RNNBase``.
* ``test_RNN_nonlinearity``, ``test_RNN_nonlinearity_passed_as_arg``.
* ``RNNBase``'s dropout checks and warning (in [0, 1], ``dropout=1`` accepted, the warning for
  one layer); ``test_RNN_dropout`` (weights of ones: the dropped value's law, p = 0, 1 and
  between, train and eval; here also the same numbers as ``torch.nn`` after the same seed);
  ``test_RNN_change_dropout`` (``m.dropout`` changed after construction is read at the next
  forward); ``test_RNN_dropout_state`` (save/load, ``flatten_parameters``, the same or fresh
  draws).
* ``test_error_RNN_seq_len_zero``; ``test_RNN_input_size_zero`` (a batch of zero sequences runs
  forward and backward).
* ``test_rnn_initial_hidden_state``, ``test_projections_lstm_initial_hidden_state``.
* ``test_rnn_weight_norm`` (``weight_norm``/``remove_weight_norm`` on ``weight_ih_l0`` and on
  ``weight_hr_l0`` keep ``_flat_weights`` and the parameters right); here also
  ``torch.nn.utils.parametrizations.weight_norm``/``spectral_norm`` and
  ``torch.nn.utils.parametrize.register_parametrization`` on a recurrent weight, with the
  numbers and gradients of ``torch.nn``.
* ``test_partial_flat_weights`` on the CPU (a deleted weight survives a dtype move and the
  module works once it is set again; PyTorch's version moves to CUDA).
* ``test_rnn_retain_variables`` (``retain_graph=True`` backwards give the same gradients).
* ``test_variable_sequence`` (packed LSTM, ``enforce_sorted`` True and False, default and
  given ``hx``, ``proj_size`` 0 and 2, against one sequence at a time).
* ``test_LSTM_grad_and_gradgrad``, ``test_GRU_grad_and_gradgrad`` (and the same for RNN).
* The unbatched-input and ``hx`` dimension checks of ``RNNBase.forward`` (2-D input with 3-D
  ``hx``, 3-D input with 2-D ``hx``, 4-D input).

Also checked, from ``RNNBase``'s public surface: ``isinstance(m, torch.nn.RNNBase)``,
``all_weights``, ``_flat_weights``/``_flat_weights_names``, ``flatten_parameters``,
``PackedSequence`` outputs (``sorted_indices``/``unsorted_indices``, ``None`` with
``enforce_sorted=True``), ``torch.func.functional_call`` with other parameters, deepcopy and
pickle, and ``torch.nn.utils.rnn`` (``pack_sequence``/``unpack_sequence``).

Left out: the CUDA/cuDNN-only tests (``test_RNN_cpu_vs_cudnn_*``, ``test_RNN_cudnn_weight_norm``,
``test_rnn_check_device``, ``test_projections_lstm_check_device``, ``test_cudnn_weight_format``,
``test_cudnn_weight_tying``, ``test_cudnn_rnn_dropout_states_device``,
``test_cudnn_forward_exception``, ``test_RNN_cudnn_flatten_*``, ``test_rnn_fused``, the
``_test_RNN_cpu_vs_cudnn`` family); the cell tests (``test_RNN_cell*``, ``test_LSTM_cell``,
``test_lstmcell_*``): the drop-ins have no cells; ``test_LSTM_differentiable_backward_using_oneDNN``
(oneDNN's own kernel; the double backward it checks is ``test_*_grad_and_gradgrad`` here);
and the ``PackedSequence``/``pack_sequence`` tests that use no module (``test_packed_sequence.py``).

The contract's regression tests: every ``.grad`` owns its storage; two backwards accumulate exactly
2x; ``clip_grad_norm_`` leaves the asked norm; a second backward without ``retain_graph`` raises,
with it gives 2x; an in-place change of the input, a weight or ``hx`` before the backward raises
"modified by an inplace operation"; ``ReLU(inplace=True)`` on the output; ``is_grads_batched``;
``gradgradcheck`` for every cell and option; ``torch.func.grad``/``vmap`` over
``functional_call``; ``torch.compile``; bfloat16/float16 modules; ``torch.autocast``.

Every comparison is with ``torch.nn`` run alike (same seed, same weights, same inputs). Where
``torch.nn`` itself cannot be the reference on this CPU, the test says so: it has no vmap
batching rule for its RNN kernels (vmap is compared with a loop, and the private torch.nn
run of this file skips that part), and its oneDNN LSTM kernel fails under ``torch.autocast``
(its native kernel, ``torch.backends.mkldnn.flags(enabled=False)``, is the reference then).
``torch.compile`` of RNN and GRU runs with ``--soak`` (each compile takes seconds).
"""

from __future__ import annotations

import copy
import io
import itertools
import os
import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils import rnn as rnn_utils  # noqa: E402

import portable_rnn.torch as prt  # noqa: E402

# Private switch, for proving these tests honest: with _PRNN_MODULE_DB_SUBJECT=torch.nn the
# "drop-ins" are torch.nn's classes themselves (every test must pass).
_AGAINST_TORCH_NN = os.environ.get("_PRNN_MODULE_DB_SUBJECT") == "torch.nn"
MODES = ("RNN", "GRU", "LSTM")
REF = {mode: getattr(torch.nn, mode) for mode in MODES}
OURS = {mode: REF[mode] if _AGAINST_TORCH_NN else getattr(prt, mode) for mode in MODES}
F64 = torch.float64
TIGHT = {"rtol": 1e-10, "atol": 1e-10}


def _pair(mode, *args, **kwargs):
    """(drop-in, torch.nn) built alike after the same seed (so with the same initial numbers)."""
    kwargs.setdefault("dtype", F64)
    torch.manual_seed(0)
    ref = REF[mode](*args, **kwargs)
    torch.manual_seed(0)
    ours = OURS[mode](*args, **kwargs)
    for (k1, p1), (k2, p2) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert k1 == k2 and torch.equal(p1, p2)
    return ours, ref


def _run_error(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - compared by the caller
        return error
    return None


def _raises_like_torch(ours_call, ref_call, *words):
    """``ours_call`` raises what ``ref_call`` raises: same type, and every key word (which
    ``torch.nn``'s message must hold too) in the message."""
    ref = _run_error(ref_call)
    assert ref is not None, "torch.nn raised nothing"
    for word in words:
        assert word in str(ref), f"key word {word!r} not in torch.nn's message {str(ref)!r}"
    got = _run_error(ours_call)
    assert got is not None, f"the drop-in raised nothing where torch.nn raised {type(ref).__name__}: {ref}"
    assert type(got) is type(ref), f"{type(got).__name__}: {got} where torch.nn raised {type(ref).__name__}: {ref}"
    for word in words:
        assert word in str(got), f"{word!r} not in {str(got)!r} (torch.nn: {str(ref)!r})"


def _state_parts(state):
    return tuple(state) if isinstance(state, tuple) else (state,)


def _close(a, b, **tol):
    torch.testing.assert_close(a, b, **(tol or TIGHT))


def _x(*shape, dtype=F64, seed=1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


def _hx(mode, layers_dirs, N, H, proj=0, dtype=F64, seed=2, requires_grad=False):
    h = _x(*((layers_dirs, N) if N else (layers_dirs,)), proj or H, dtype=dtype, seed=seed,
           requires_grad=requires_grad)
    if mode != "LSTM":
        return h
    c = _x(*((layers_dirs, N) if N else (layers_dirs,)), H, dtype=dtype, seed=seed + 1, requires_grad=requires_grad)
    return h, c


def _clone_hx(hx, requires_grad=None):
    def one(t):
        out = t.detach().clone()
        return out.requires_grad_(t.requires_grad if requires_grad is None else requires_grad)
    return None if hx is None else tuple(map(one, hx)) if isinstance(hx, tuple) else one(hx)


def _grads(module):
    return {k: p.grad for k, p in module.named_parameters()}


# === test_nn.py: argument checks and messages ====================================================

@pytest.mark.parametrize("mode", MODES)
def test_rnn_args_check(mode):
    """Each bad shape raises torch.nn's RuntimeError and message (sizes 3/5, 2 layers, batch 4)."""
    ours, ref = _pair(mode, 3, 5, 2, dtype=torch.float32)
    good_x, good_h = (6, 4, 3), (2, 4, 5)
    cases = [  # (input shape, hidden shape, key words)
        ((6, 7, 3), good_h, "Expected hidden size (2, 7, 5), got [2, 4, 5]"),  # input batch
        (good_x, (2, 7, 5), "Expected hidden size (2, 4, 5), got [2, 7, 5]"),  # hidden batch
        ((6, 4, 7), good_h, "input.size(-1) must be equal to input_size. Expected 3, got 7"),
        (good_x, (2, 4, 7), "Expected hidden size (2, 4, 5), got [2, 4, 7]"),  # hidden size
        (good_x, (7, 4, 5), "Expected hidden size (2, 4, 5), got [7, 4, 5]"),  # layers * directions
    ]
    for x_shape, h_shape, words in cases:
        x, bad = torch.randn(x_shape), torch.randn(h_shape)
        if mode == "LSTM" and h_shape != good_h:
            good = torch.randn(good_h)
            hiddens = [((bad, good), "Expected hidden[0] size"), ((good, bad), "Expected hidden[1] size")]
        elif mode == "LSTM":  # the input batch: h is checked first
            hiddens = [((bad, bad), words.replace("hidden size", "hidden[0] size"))]
        else:
            hiddens = [(bad, words)]
        for hx, key in hiddens:
            _raises_like_torch(lambda: ours(x, hx), lambda: ref(x, hx), key)


def test_projections_lstm_args_check():
    ours, ref = _pair("LSTM", 3, 5, 2, proj_size=2, dtype=torch.float32)
    x = torch.randn(6, 4, 3)
    for h_shape, c_shape, key in [((2, 4, 5), (2, 4, 5), "Expected hidden[0] size (2, 4, 2)"),
                                  ((2, 4, 2), (2, 4, 2), "Expected hidden[1] size (2, 4, 5)"),
                                  ((2, 7, 2), (2, 4, 5), "Expected hidden[0] size"),
                                  ((2, 4, 2), (3, 4, 5), "Expected hidden[1] size")]:
        hx = (torch.randn(h_shape), torch.randn(c_shape))
        _raises_like_torch(lambda: ours(x, hx), lambda: ref(x, hx), key)
    x_ok, hx_ok = torch.randn(6, 4, 3, dtype=F64), (torch.zeros(2, 4, 2, dtype=F64), torch.zeros(2, 4, 5, dtype=F64))
    ours, ref = _pair("LSTM", 3, 5, 2, proj_size=2)
    for a, b in zip((ours(x_ok, hx_ok)[0], *ours(x_ok, hx_ok)[1]), (ref(x_ok, hx_ok)[0], *ref(x_ok, hx_ok)[1])):
        assert a.shape == b.shape
        _close(a, b)


@pytest.mark.parametrize("mode", ["RNN", "GRU"])
def test_projections_errors_on_gru_and_rnn(mode):
    _raises_like_torch(lambda: OURS[mode](3, 5, 2, proj_size=3), lambda: REF[mode](3, 5, 2, proj_size=3),
                       "proj_size argument is only supported for LSTM, not RNN or GRU")


def test_lstm_proj_size_range_checks():
    for proj, words in [(5, "proj_size has to be smaller than hidden_size"), (7, "smaller than hidden_size"),
                        (-1, "proj_size should be a positive integer or zero")]:
        _raises_like_torch(lambda: OURS["LSTM"](3, 5, proj_size=proj), lambda: REF["LSTM"](3, 5, proj_size=proj), words)


def test_RNN_nonlinearity():
    assert OURS["RNN"](1, 10).nonlinearity == "tanh"
    assert OURS["RNN"](1, 10, nonlinearity="relu").nonlinearity == "relu"
    m = OURS["RNN"](2, 3, 1, "relu")  # nonlinearity passed positionally, as torch.nn takes it
    assert (m.input_size, m.hidden_size, m.num_layers, m.nonlinearity) == (2, 3, 1, "relu")
    _raises_like_torch(lambda: OURS["RNN"](1, 10, nonlinearity="garbage"),
                       lambda: REF["RNN"](1, 10, nonlinearity="garbage"), "Unknown nonlinearity")
    ours, ref = _pair("RNN", 2, 3, 1, "relu")
    x = _x(4, 2, 2)
    _close(ours(x)[0], ref(x)[0])


@pytest.mark.parametrize("mode", MODES)
def test_dropout_argument_checks_and_warning(mode):
    for bad in (-0.1, 1.1, True, "0.5"):
        _raises_like_torch(lambda: OURS[mode](3, 5, 2, dropout=bad), lambda: REF[mode](3, 5, 2, dropout=bad),
                           "dropout should be a number in range [0, 1]")
    assert OURS[mode](3, 5, 2, dropout=1).dropout == 1
    assert OURS[mode](3, 5, 2, dropout=0).dropout == 0
    messages = []
    for cls in (OURS[mode], REF[mode]):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(3, 4, dropout=0.5)
        messages.append([str(w.message) for w in caught if issubclass(w.category, UserWarning)])
    assert messages[0] == messages[1] and len(messages[1]) == 1


@pytest.mark.parametrize("mode", MODES)
def test_error_RNN_seq_len_zero(mode):
    for bidirectional in (False, True):
        ours, ref = _pair(mode, 5, 6, bidirectional=bidirectional)
        x = torch.ones(0, 10, 5, dtype=F64)
        _raises_like_torch(lambda: ours(x), lambda: ref(x), "Expected sequence length to be larger than 0 in RNN")


@pytest.mark.parametrize("mode", MODES)
def test_RNN_input_size_zero_batch(mode):
    """A batch of zero sequences: output (5, 0, H), and the backward runs."""
    ours, ref = _pair(mode, 3, 4)
    x = torch.zeros(5, 0, 3, dtype=F64)
    out, ref_out = ours(x), ref(x)
    assert out[0].shape == ref_out[0].shape == (5, 0, 4)
    assert [s.shape for s in _state_parts(out[1])] == [s.shape for s in _state_parts(ref_out[1])]
    out[0].sum().backward()
    ref_out[0].sum().backward()
    for key, g in _grads(ref).items():
        gr = _grads(ours)[key]
        assert (g is None) == (gr is None) and (g is None or torch.equal(gr, g)), key


@pytest.mark.parametrize("mode", MODES)
def test_unbatched_input_and_hx_dimension_checks(mode):
    ours, ref = _pair(mode, 3, 5, 2)
    x2, x3 = _x(4, 3), _x(4, 2, 3)
    h3, h2 = _hx(mode, 2, 1, 5), _hx(mode, 2, None, 5)
    words = "hx and cx should also be 2-D" if mode == "LSTM" else "hx should also be 2-D"
    _raises_like_torch(lambda: ours(x2, h3), lambda: ref(x2, h3), "For unbatched 2-D input", words)
    words = "hx and cx should also be 3-D" if mode == "LSTM" else "hx should also be 3-D"
    _raises_like_torch(lambda: ours(x3, h2), lambda: ref(x3, h2), "For batched 3-D input", words)
    x4 = _x(1, 4, 2, 3)
    _raises_like_torch(lambda: ours(x4), lambda: ref(x4), "Expected input to be 2D or 3D, got 4D")
    out, ref_out = ours(x2, h2), ref(x2, h2)  # unbatched with a 2-D hx
    _close(out[0], ref_out[0])
    for a, b in zip(_state_parts(out[1]), _state_parts(ref_out[1])):
        assert a.shape == b.shape
        _close(a, b)


# === test_nn.py: dropout =========================================================================

def _ones_rnn(cls, p):
    torch.manual_seed(0)
    rnn = cls(10, 100, 2, bias=False, dropout=p, nonlinearity="relu", dtype=F64)
    with torch.no_grad():
        for w in rnn.parameters():
            w.fill_(1)
    return rnn


@pytest.mark.parametrize("p", [0, 0.276, 0.731, 1])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_RNN_dropout(p, train):
    """Weights of ones, relu: layer 1 gives 10 everywhere, layer 2 sums the dropped 10s."""
    results = []
    for cls in (OURS["RNN"], REF["RNN"]):
        rnn = _ones_rnn(cls, p).train(train)
        torch.manual_seed(5)
        output, hy = rnn(torch.ones(1, 1, 10, dtype=F64), torch.zeros(2, 1, 100, dtype=F64))
        results.append((output, hy))
        assert output.min() == output.max()
        value = output[0, 0, 0].item()
        if p == 0 or not train:
            assert value == 1000
        elif p == 1:
            assert value == 0
        else:
            assert 600 < value < 1400
            undone = (value * (1 - p)) % 10  # a whole number of kept 10s
            assert min(undone, 10 - undone) < 1e-6
        assert hy[0].min() == hy[0].max() and hy[1].min() == hy[1].max()
        assert hy[0, 0, 0].item() == 10 and hy[1, 0, 0].item() == value
    _close(results[0][0], results[1][0])  # and the same draws as torch.nn after the same seed
    _close(results[0][1], results[1][1])


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_RNN_change_dropout(train):
    """``m.dropout = p`` after construction is read at the next forward, p in [0, 1]."""
    ours, ref = _pair("RNN", 10, 10, 2, nonlinearity="relu")
    x = _x(3, 2, 10)
    previous = None
    for p in (0, 0.5, 0, 0.7, 0.2, 1, 0.2, 0):
        outs = []
        for m in (ours, ref):
            m.dropout = p
            m.train(train)
            torch.manual_seed(7)
            first = m(x)
            second = m(x)
            outs.append((first, second))
        (o1, h1), (o2, h2) = outs[0]
        _close(o1, outs[1][0][0])  # torch.nn's numbers after the same seed
        _close(o2, outs[1][1][0])
        if p in (0, 1) or not train:
            assert torch.equal(o1, o2) and torch.equal(h1, h2)
        else:
            assert not torch.equal(o1, o2) and not torch.equal(h1, h2)
        if previous is not None:
            assert torch.equal(o1, previous) is (not train)
        previous = o1.detach()


@pytest.mark.parametrize("p", [0, 0.1234])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_RNN_dropout_state(p, train):
    """Saved, loaded and ``flatten_parameters``-ed, the module draws fresh factors in training."""
    ours, _ = _pair("RNN", 20, 20, 2, bias=False, dropout=p, nonlinearity="relu")
    ours.train(train)
    x, hx = torch.rand(1, 1, 20, dtype=F64), torch.rand(2, 1, 20, dtype=F64)
    out1, hy1 = ours(x, hx)
    out2, hy2 = ours(x, hx)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.flatten_parameters()
    out3, hy3 = loaded(x, hx)
    same = p == 0 or not train
    assert torch.equal(out1, out2) is same and torch.equal(out1, out3) is same
    assert torch.equal(hy1, hy2) is same and torch.equal(hy1, hy3) is same


# === test_nn.py: initial state, packed sequences, retain_graph, gradcheck =========================

@pytest.mark.parametrize("mode", MODES)
def test_rnn_initial_hidden_state(mode):
    for bidirectional, proj in [(False, 0), (True, 0)] + ([(False, 3), (True, 3)] if mode == "LSTM" else []):
        kwargs = {"proj_size": proj} if proj else {}
        ours, ref = _pair(mode, 6, 5, 2, bidirectional=bidirectional, **kwargs)
        dirs = 2 if bidirectional else 1
        x = _x(4, 3, 6)
        zeros = torch.zeros(2 * dirs, 3, proj or 5, dtype=F64)
        hidden = (zeros, torch.zeros(2 * dirs, 3, 5, dtype=F64)) if mode == "LSTM" else zeros
        out1, h1 = ours(x, hidden)
        out2, h2 = ours(x)
        _close(out1, out2)
        _close(_state_parts(h1), _state_parts(h2))
        _close(out2, ref(x)[0])


@pytest.mark.parametrize("mode", MODES)
def test_rnn_retain_variables(mode):
    ours, ref = _pair(mode, 4, 5, 2)
    x = _x(5, 3, 4, requires_grad=True)
    out = ours(x)
    out[0].sum().backward(retain_graph=True)
    grads = [x.grad.clone()] + [p.grad.clone() for p in ours.parameters()]
    for _ in range(3):
        ours.zero_grad()
        x.grad.zero_()
        out[0].sum().backward(retain_graph=True)
        _close([x.grad] + [p.grad for p in ours.parameters()], grads)
    x2 = x.detach().clone().requires_grad_(True)
    ref(x2)[0].sum().backward()
    _close(grads, [x2.grad] + [p.grad for p in ref.parameters()])


@pytest.mark.parametrize("enforce_sorted, lengths", [
    (True, [5]), (False, [5]), (True, [6, 6, 4, 2, 1]), (False, [6, 6, 4, 2, 1]), (False, [2, 1, 3, 6, 5]),
])
def test_variable_sequence(enforce_sorted, lengths):
    """A packed bidirectional 2-layer LSTM equals running each sequence alone (outputs, states,
    input and parameter gradients), and torch.nn's packed run."""
    for default_hx, proj in itertools.product((True, False), (0, 2)):
        ours, ref = _pair("LSTM", 3, 4, 2, bidirectional=True, proj_size=proj)
        alone = copy.deepcopy(ours)
        T, N = max(lengths), len(lengths)
        x = _x(T, N, 3, requires_grad=True)
        hx = None if default_hx else _hx("LSTM", 4, N, 4, proj)
        outs, hiddens = [], []
        for i, length in enumerate(lengths):
            h_i = None if hx is None else tuple(h[:, i:i + 1] for h in hx)
            out, hid = alone(x[:length, i:i + 1], h_i)
            outs.append(torch.cat([out, out.new_zeros(T - length, 1, out.shape[2])]))
            hiddens.append(hid)
        seq_out = torch.cat(outs, 1)
        seq_hidden = tuple(torch.cat(parts, 1) for parts in zip(*hiddens))
        results = []
        for m in (ours, ref):
            xm = x.detach().clone().requires_grad_(True)
            packed = rnn_utils.pack_padded_sequence(xm, lengths, enforce_sorted=enforce_sorted)
            packed_out, packed_hidden = m(packed, hx)
            unpacked, unpacked_len = rnn_utils.pad_packed_sequence(packed_out)
            unpacked.sum().backward()
            results.append((unpacked, packed_hidden, xm.grad, _grads(m)))
            assert unpacked_len.tolist() == lengths
        unpacked, packed_hidden, x_grad, grads = results[0]
        _close(packed_hidden, seq_hidden)
        _close(unpacked, seq_out)
        seq_out.sum().backward()
        _close(x_grad, x.grad)
        _close(grads, _grads(alone))
        _close(results[0][:3], results[1][:3])
        _close(grads, results[1][3])


@pytest.mark.parametrize("mode", MODES)
def test_packed_sequence_indices_as_torch_nn(mode):
    """``sorted_indices``/``unsorted_indices`` of the output as torch.nn's (``None`` when sorted)."""
    ours, ref = _pair(mode, 3, 4, bidirectional=True)
    seqs = [_x(length, 3, seed=length) for length in (2, 5, 3)]
    for enforce_sorted in (True, False):
        if enforce_sorted:
            seqs_in = sorted(seqs, key=len, reverse=True)
        else:
            seqs_in = seqs
        packed = rnn_utils.pack_sequence(seqs_in, enforce_sorted=enforce_sorted)
        out, state = ours(packed)
        ref_out, ref_state = ref(packed)
        for field in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out, field), getattr(ref_out, field)
            assert (a is None) == (b is None) and (b is None or torch.equal(a, b)), (enforce_sorted, field, a, b)
        assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
        _close(out.data, ref_out.data)
        _close(_state_parts(state), _state_parts(ref_state))
        for a, b in zip(rnn_utils.unpack_sequence(out), rnn_utils.unpack_sequence(ref_out), strict=True):
            _close(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_grad_and_gradgrad(mode):
    """``test_LSTM_grad_and_gradgrad``/``test_GRU_grad_and_gradgrad``: the input's derivatives."""
    inp = torch.rand(1, 3, 4, dtype=F64, requires_grad=True)
    for bias in (True, False):
        torch.manual_seed(0)
        mod = OURS[mode](4, 4, bias=bias, dtype=F64)

        def flat(x):
            out, state = mod(x)
            return (out, *_state_parts(state))

        # PyTorch's gradcheck wrappers (common_utils) default to fast mode
        assert torch.autograd.gradcheck(flat, (inp,), check_batched_grad=False, fast_mode=True)
        assert torch.autograd.gradgradcheck(flat, (inp,), check_batched_grad=False, fast_mode=True)


# === RNNBase's public surface =====================================================================

@pytest.mark.parametrize("mode", MODES)
def test_rnnbase_surface_all_weights_flat_weights_flatten_parameters(mode):
    kwargs = {"proj_size": 2} if mode == "LSTM" else {}
    ours, ref = _pair(mode, 3, 4, 2, bidirectional=True, **kwargs)
    assert isinstance(ours, torch.nn.RNNBase)
    assert ours.mode == ref.mode
    assert ours._flat_weights_names == ref._flat_weights_names
    assert [id(w) for w in ours._flat_weights] == [id(getattr(ours, n)) for n in ours._flat_weights_names]
    assert [[tuple(w.shape) for w in layer] for layer in ours.all_weights] == \
        [[tuple(w.shape) for w in layer] for layer in ref.all_weights]
    assert all(isinstance(w, torch.nn.Parameter) for layer in ours.all_weights for w in layer)
    ours.flatten_parameters()
    x = _x(5, 2, 3)
    _close(ours(x)[0], ref(x)[0])
    with torch.no_grad():  # the module reads the weights it is given, in place or reassigned
        ours.weight_hh_l0.mul_(0.5)
        ref.weight_hh_l0.mul_(0.5)
    _close(ours(x)[0], ref(x)[0])
    new = torch.nn.Parameter(_x(*ref.weight_ih_l1.shape, seed=9))
    ours.weight_ih_l1, ref.weight_ih_l1 = new, torch.nn.Parameter(new.detach().clone())
    assert ours._flat_weights[ours._flat_weights_names.index("weight_ih_l1")] is new
    _close(ours(x)[0], ref(x)[0])


def test_partial_flat_weights():
    """A deleted weight survives a dtype move; set again, the module gives the same outputs."""
    for cls in (OURS["LSTM"], REF["LSTM"]):
        torch.manual_seed(0)
        m = cls(10, 6, 2)
        x = torch.randn(3, 2, 10)
        expected = m(x)[0]
        weight = m.weight_hh_l0
        del m.weight_hh_l0
        assert not hasattr(m, "weight_hh_l0")
        m.double()
        m.weight_hh_l0 = torch.nn.Parameter(weight.detach().double())
        torch.testing.assert_close(m(x.double())[0], expected.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, proj, count", [("weight_ih_l0", 0, 4), ("weight_hr_l0", 2, 5)])
def test_rnn_weight_norm(name, proj, count):
    """``weight_norm`` makes the weight a plain tensor in ``_flat_weights``; removing it restores
    the Parameter; the forward reads the reparametrized weight, with torch.nn's numbers."""
    kwargs = {"proj_size": proj} if proj else {}
    ours, ref = _pair("LSTM", 5, 4, **kwargs)
    x = _x(3, 2, 5)
    for m in (ours, ref):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.nn.utils.weight_norm is deprecated
            torch.nn.utils.weight_norm(m, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in m._flat_weights) == count - 1
        with torch.no_grad():
            getattr(m, name + "_g").mul_(1.5)
    out, ref_out = ours(x), ref(x)
    _close(out[0], ref_out[0])
    out[0].sum().backward()
    ref_out[0].sum().backward()
    _close(_grads(ours), _grads(ref))
    for m in (ours, ref):
        torch.nn.utils.remove_weight_norm(m, name=name)
        assert sum(isinstance(p, torch.nn.Parameter) for p in m._flat_weights) == count
        params = dict(m.named_parameters())
        assert name in m._parameters and m._parameters[name] is not None and name in params
        assert not any(k in m._parameters or k in params for k in (name + "_v", name + "_g"))
    _close(ours(x)[0], ref(x)[0])


class _Scale(torch.nn.Module):
    def forward(self, w):
        return 0.5 * w.tanh()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "register_parametrization", "old_spectral_norm"])
def test_parametrizations_on_a_recurrent_weight(mode, kind):
    """``torch.nn.utils.parametrizations`` / ``parametrize`` on ``weight_hh_l0``: the drop-in's
    forward, outputs and gradients (of the original tensors) are torch.nn's."""
    ours, ref = _pair(mode, 3, 4, 2)
    x = _x(5, 2, 3)
    for m in (ours, ref):
        torch.manual_seed(3)  # spectral_norm draws its power-iteration vectors
        if kind == "weight_norm":
            torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
        elif kind == "spectral_norm":
            torch.nn.utils.parametrizations.spectral_norm(m, "weight_hh_l0")
        elif kind == "old_spectral_norm":
            torch.nn.utils.spectral_norm(m, "weight_hh_l0")
        else:
            torch.nn.utils.parametrize.register_parametrization(m, "weight_hh_l0", _Scale())
    m_eval_first = [ours(x), ref(x)]
    _close(m_eval_first[0][0], m_eval_first[1][0])
    for m in (ours, ref):
        m.zero_grad()
    torch.manual_seed(4)
    out = ours(x)
    torch.manual_seed(4)
    ref_out = ref(x)
    _close(out[0], ref_out[0])
    out[0].square().sum().backward()
    ref_out[0].square().sum().backward()
    assert list(_grads(ours)) == list(_grads(ref))
    _close(_grads(ours), _grads(ref))


@pytest.mark.parametrize("mode", MODES)
def test_functional_call_with_other_parameters(mode):
    ours, ref = _pair(mode, 3, 4, 2, bidirectional=True)
    params = {k: _x(*p.shape, seed=10 + i, requires_grad=True) for i, (k, p) in enumerate(ref.named_parameters())}
    x = _x(5, 2, 3)
    out = torch.func.functional_call(ours, params, (x,))
    ref_params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    ref_out = torch.func.functional_call(ref, ref_params, (x,))
    _close(out[0], ref_out[0])
    out[0].square().sum().backward()
    ref_out[0].square().sum().backward()
    _close({k: v.grad for k, v in params.items()}, {k: v.grad for k, v in ref_params.items()})
    assert all(p.grad is None for p in ours.parameters())  # the module's own parameters untouched
    _close(ours(x)[0], ref(x)[0])


@pytest.mark.parametrize("mode", MODES)
def test_deepcopy_and_pickle(mode):
    ours, ref = _pair(mode, 3, 4, 2)
    x = _x(5, 2, 3)
    expected = ref(x)[0]
    for copied in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(copied) is type(ours)
        _close(copied(x)[0], expected)
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(copied.parameters(), ours.parameters()))


# === the contract: gradients, autograd's checks, transforms =========================================

_OPTION_SETS = {  # mode -> constructor kwargs of a module with every option
    "RNN": {"num_layers": 2, "bidirectional": True},
    "GRU": {"num_layers": 2, "bidirectional": True},
    "LSTM": {"num_layers": 2, "bidirectional": True, "proj_size": 2},
}


def _loss(module, x, hx=None, seed=3):
    out, state = module(x, hx)
    w = _x(*out.shape, seed=seed)
    return (out * w).sum() + _state_parts(state)[0].square().sum()


@pytest.mark.parametrize("mode", MODES)
def test_gradients_own_their_storage(mode):
    ours, _ = _pair(mode, 3, 4, **_OPTION_SETS[mode])
    _loss(ours, _x(5, 2, 3)).backward()
    spans = []
    for name, p in ours.named_parameters():
        storage = p.grad.untyped_storage()
        spans.append((storage.data_ptr(), storage.data_ptr() + storage.nbytes(), name))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        assert a1 <= b0, f"{an}.grad and {bn}.grad share memory"


@pytest.mark.parametrize("mode", MODES)
def test_two_backwards_accumulate_exactly_twice_and_clipping(mode):
    ours, ref = _pair(mode, 3, 4, **_OPTION_SETS[mode])
    x = _x(5, 2, 3)
    for m in (ours, ref):
        _loss(m, x).backward()
    once = {k: g.clone() for k, g in _grads(ours).items()}
    _close(once, _grads(ref))
    for m in (ours, ref):
        _loss(m, x).backward()
    _close(_grads(ours), {k: 2 * g for k, g in once.items()})
    _close(_grads(ours), _grads(ref))
    norms = []
    for m in (ours, ref):
        m.zero_grad()
        _loss(m, x).backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)  # scales by 0.1 / (norm + 1e-6)
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in m.parameters()])))
    assert abs(norms[0].item() - 0.1) < 1e-6
    _close(norms[0], norms[1])


@pytest.mark.parametrize("mode", MODES)
def test_second_backward_needs_retain_graph(mode):
    ours, ref = _pair(mode, 3, 4)
    x = _x(5, 2, 3)
    for m in (ours, ref):
        loss = _loss(m, x)
        loss.backward()
        with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
            loss.backward()
    ours.zero_grad()
    loss = _loss(ours, x)
    loss.backward(retain_graph=True)
    once = {k: g.clone() for k, g in _grads(ours).items()}
    loss.backward()
    _close(_grads(ours), {k: 2 * g for k, g in once.items()})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("what", ["input", "weight", "hx"])
def test_inplace_change_before_backward_raises(mode, what):
    errors = []
    for m in _pair(mode, 3, 4):
        x = _x(5, 2, 3, requires_grad=True)
        hx = _hx(mode, 1, 2, 4, requires_grad=True)
        hx_used = _clone_hx(hx) if what != "hx" else tuple(h * 1 for h in hx) if mode == "LSTM" else hx * 1
        x_used = x * 1
        loss = _loss(m, x_used, hx_used)
        with torch.no_grad():
            if what == "input":
                x_used.add_(1)
            elif what == "weight":
                m.weight_hh_l0.add_(1)
            else:
                _state_parts(hx_used)[0].add_(1)
        errors.append(_run_error(loss.backward))
    ours_error, ref_error = errors
    # torch.nn: "... has been modified by an inplace operation" (input, weight); for hx, which
    # it unbinds into views, "... its base ... has been modified inplace"
    assert isinstance(ref_error, RuntimeError) and all(w in str(ref_error) for w in ("modified", "inplace"))
    assert isinstance(ours_error, RuntimeError), f"the drop-in raised {ours_error!r}"
    assert all(w in str(ours_error) for w in ("modified", "inplace")), str(ours_error)
    if what != "hx":
        assert "modified by an inplace operation" in str(ours_error)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_inplace_relu_on_the_output(mode, bidirectional):
    ours, ref = _pair(mode, 3, 4, bidirectional=bidirectional)
    x = _x(5, 2, 3)
    results = []
    for m in (ours, ref):
        out, state = m(x)
        y = torch.nn.ReLU(inplace=True)(out)
        h = torch.nn.ReLU(inplace=True)(_state_parts(state)[0])
        (y.square().sum() + h.sum()).backward()
        results.append((y, _grads(m)))
    _close(results[0][0], results[1][0])
    _close(results[0][1], results[1][1])


@pytest.mark.parametrize("mode", MODES)
def test_is_grads_batched_equals_a_loop(mode):
    ours, _ = _pair(mode, 3, 4, **_OPTION_SETS[mode])
    x = _x(4, 2, 3, requires_grad=True)
    out, _ = ours(x)
    cotangents = _x(3, *out.shape, seed=5)
    inputs = (x, *ours.parameters())
    batched = torch.autograd.grad(out, inputs, cotangents, is_grads_batched=True, retain_graph=True)
    for i in range(cotangents.shape[0]):
        looped = torch.autograd.grad(out, inputs, cotangents[i], retain_graph=True)
        _close([b[i] for b in batched], list(looped))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", ["plain", "all"])
def test_gradgradcheck_every_cell(mode, options):
    """Double backward through input, ``hx`` and every parameter (tiny sizes, float64)."""
    kwargs = _OPTION_SETS[mode] if options == "all" else {}
    torch.manual_seed(0)
    m = OURS[mode](2, 3, dtype=F64, **kwargs)
    layers_dirs = 4 if options == "all" else 1
    x = _x(3, 2, 2, requires_grad=True)
    hx = _hx(mode, layers_dirs, 2, 3, kwargs.get("proj_size", 0), requires_grad=True)
    hx = _state_parts(hx)
    params = tuple(m.parameters())

    def fn(x, *rest):
        state = rest[:len(hx)]
        out, final = m(x, state if mode == "LSTM" else state[0])
        return (out, *_state_parts(final))

    assert torch.autograd.gradgradcheck(fn, (x, *hx, *params), check_batched_grad=False, fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_torch_func_grad_and_vmap_over_functional_call(mode):
    ours, ref = _pair(mode, 3, 4, **_OPTION_SETS[mode])
    params = {k: p.detach() for k, p in ours.named_parameters()}
    x = _x(4, 2, 3)

    def loss(params, x):
        out, state = torch.func.functional_call(ours, params, (x,))
        return out.square().sum() + _state_parts(state)[0].sum()

    grads = torch.func.grad(loss)(params, x)
    ref_out, ref_state = ref(x)
    (ref_out.square().sum() + _state_parts(ref_state)[0].sum()).backward()
    _close(grads, _grads(ref))
    if _AGAINST_TORCH_NN:
        pytest.skip("torch.nn's CPU kernels have no vmap batching rule (aten::rnn_tanh/gru/lstm.input): "
                    "vmap is held to a loop for the drop-ins only")
    xs = _x(3, 4, 2, 3, seed=8)
    batched = torch.func.vmap(loss, in_dims=(None, 0))(params, xs)
    _close(batched, torch.stack([loss(params, xi) for xi in xs]))
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)
    for i, xi in enumerate(xs):
        _close({k: v[i] for k, v in per_sample.items()}, torch.func.grad(loss)(params, xi))


@pytest.mark.parametrize("mode", MODES)
def test_torch_compile_runs_a_model_around_it(mode):
    """``torch.compile`` (aot_eager: Dynamo and AOTAutograd without a C++ build) of a model holding
    the layer gives torch.nn's outputs and gradients; Dynamo does not trace into the layer (its
    forward is ``torch.compiler.disable``-d), so the model compiles in about a second."""
    torch._dynamo.reset()
    (ours, ref), heads = _pair(mode, 3, 4, bidirectional=True), []
    for _ in range(2):
        torch.manual_seed(5)
        heads.append(torch.nn.Linear(8, 1, dtype=torch.float64))  # 2 directions x 4

    def model(rnn, head, x):
        return head(torch.tanh(rnn(x)[0])).square().sum()

    x = _x(5, 2, 3)
    explained = torch._dynamo.explain(model)(ours, heads[0], x)
    # Dynamo traces nothing inside the layer: at most the graphs before and after it.
    assert explained.graph_count <= 2 and explained.graph_break_count <= 1, explained.break_reasons
    loss = torch.compile(model, backend="aot_eager")(ours, heads[0], x)
    ref_loss = model(ref, heads[1], x)
    _close(loss, ref_loss)
    loss.backward()
    ref_loss.backward()
    _close(_grads(ours), _grads(ref))
    _close(_grads(heads[0]), _grads(heads[1]))
    torch._dynamo.reset()


HALF_TOL = {torch.bfloat16: {"rtol": 0.05, "atol": 0.05}, torch.float16: {"rtol": 0.01, "atol": 0.01}}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_half_precision_modules(mode, half):
    """A half-precision module runs forward and backward on the CPU, returns its dtype, gives
    gradients in the parameters' dtype, and is near the float32 numbers, as torch.nn's is."""
    results = {}
    for name, cls in (("ours", OURS[mode]), ("ref", REF[mode])):
        torch.manual_seed(0)
        m32 = cls(3, 4, **_OPTION_SETS[mode])
        m = copy.deepcopy(m32).to(half)
        x = _x(5, 2, 3, dtype=torch.float32)
        out, state = m(x.to(half))
        assert out.dtype == half and all(s.dtype == half for s in _state_parts(state))
        out.float().square().sum().backward()
        assert all(p.grad is not None and p.grad.dtype == half for p in m.parameters())
        out32, state32 = m32(x)
        out32.square().sum().backward()
        torch.testing.assert_close(out.float(), out32, **HALF_TOL[half])
        for p, p32 in zip(m.parameters(), m32.parameters()):
            torch.testing.assert_close(p.grad.float(), p32.grad, rtol=0.1, atol=0.1)
        results[name] = out.float()
    torch.testing.assert_close(results["ours"], results["ref"], **HALF_TOL[half])


def _without_failing_onednn(module, x):
    """``module(x)``; where torch's oneDNN LSTM kernel fails ("could not create a primitive
    descriptor"), its native kernel's result (the drop-ins never call oneDNN's RNN kernels)."""
    try:
        return module(x)
    except RuntimeError as error:
        if "primitive" not in str(error):
            raise
    with torch.backends.mkldnn.flags(enabled=False):
        return module(x)


@pytest.mark.parametrize("mode", MODES)
def test_autocast_bfloat16_computes_in_float32_and_returns_the_module_dtype(mode):
    """Under ``torch.autocast('cpu', bfloat16)`` a float32 module returns float32, close to torch.nn's numbers.

    The drop-ins' rule is the module's dtype, for every cell. torch 2.13's own
    CPU modules differ among themselves: float32 for GRU and LSTM, bfloat16
    for RNN and for the outputs of an LSTM with projections (their products
    are autocast's); its oneDNN LSTM kernel fails under autocast, so its
    native kernel is the reference for the numbers.
    """
    options = [{}, _OPTION_SETS[mode]] + ([{"proj_size": 2}] if mode == "LSTM" else [])
    x = _x(5, 2, 3, dtype=torch.float32)
    for kwargs in options:
        ours, ref = _pair(mode, 3, 4, dtype=torch.float32, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref_out, out = _without_failing_onednn(ref, x), _without_failing_onednn(ours, x)
        got = [out[0], *_state_parts(out[1])]
        want = [ref_out[0], *_state_parts(ref_out[1])]
        assert [t.dtype for t in got] == [torch.float32] * len(got), kwargs
        for a, b in zip(got, want):
            torch.testing.assert_close(a.float(), b.float(), **HALF_TOL[torch.bfloat16])
