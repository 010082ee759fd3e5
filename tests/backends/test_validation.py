"""Bad input gets a clear error naming the argument, what it got and what was expected."""

from __future__ import annotations

import numpy as np
import pytest

import portable_rnn as prnn
from portable_rnn.testing.fixtures import FIXTURES

RNN_FWD = next(f for f in FIXTURES if f.name == "rnn_forward").draw()
LSTM_FWD = next(f for f in FIXTURES if f.name == "lstm_forward").draw()
RNN_P = {k: RNN_FWD[k] for k in ("Wax", "Waa", "Wya", "ba", "by")}
LSTM_P = {k: LSTM_FWD[k] for k in ("Wf", "bf", "Wi", "bi", "Wo", "bo", "Wc", "bc", "Wy", "by")}


def test_xt_features_must_match_Wax():
    with pytest.raises(ValueError, match=r"parameters\['Wax'\] has shape \(5, 3\); expected \(5, 4\)"):
        prnn.rnn_cell_forward(np.zeros((4, 10)), np.zeros((5, 10)), RNN_P)


def test_a0_batch_must_match_x():
    with pytest.raises(ValueError, match=r"a0 has shape \(5, 9\); expected \(5, 10\)"):
        prnn.rnn_forward(RNN_FWD["x"], np.zeros((5, 9)), RNN_P)
    with pytest.raises(ValueError, match=r"a0 has shape \(5, 9\); expected \(5, 10\)"):
        prnn.lstm_forward(LSTM_FWD["x"], np.zeros((5, 9)), LSTM_P)


def test_x_must_be_three_dimensional():
    with pytest.raises(ValueError, match=r"x has shape \(3, 10\); expected \(\*, \*, \*\)"):
        prnn.rnn_forward(RNN_FWD["x"][:, :, 0], RNN_FWD["a0"], RNN_P)


def test_missing_parameter_keys_are_named():
    p = dict(LSTM_P)
    del p["Wo"]
    with pytest.raises(ValueError, match=r"parameters is missing key\(s\) \['Wo'\]"):
        prnn.lstm_forward(LSTM_FWD["x"], LSTM_FWD["a0"], p)


def test_lstm_gate_weight_shape():
    p = dict(LSTM_P, Wc=np.zeros((5, 7)))
    with pytest.raises(ValueError, match=r"parameters\['Wc'\] has shape \(5, 7\); expected \(5, 8\)"):
        prnn.lstm_forward(LSTM_FWD["x"], LSTM_FWD["a0"], p)


def test_integer_inputs_are_refused_not_upcast():
    with pytest.raises(TypeError, match=r"x has dtype int64; expected a real floating dtype"):
        prnn.rnn_forward(RNN_FWD["x"].astype(np.int64), RNN_FWD["a0"], RNN_P)


def test_mixed_float_dtypes_are_refused():
    with pytest.raises(TypeError, match=r"a0 has dtype float32 but x has dtype float64"):
        prnn.rnn_forward(RNN_FWD["x"], RNN_FWD["a0"].astype(np.float32), RNN_P)


def test_mixed_array_libraries_name_both():
    torch = pytest.importorskip("torch", reason="torch: not installed")
    with pytest.raises(TypeError, match=r"x is a numpy array but a0 is a torch array"):
        prnn.rnn_forward(RNN_FWD["x"], torch.asarray(RNN_FWD["a0"]), RNN_P)


def test_non_arrays_are_refused():
    with pytest.raises(TypeError, match=r"a0 must be an array"):
        prnn.rnn_forward(RNN_FWD["x"], RNN_FWD["a0"].tolist(), RNN_P)


def test_mismatched_devices_are_named():
    xp = pytest.importorskip("array_api_strict", reason="array_api_strict: not installed")
    dev = xp.Device("device1")
    p = {k: xp.asarray(v) for k, v in RNN_P.items()}
    with pytest.raises(ValueError, match=r"a0 is on device .*device1.* but x is on device"):
        prnn.rnn_forward(xp.asarray(RNN_FWD["x"]), xp.asarray(RNN_FWD["a0"], device=dev), p)


def test_backward_lengths_must_match():
    x = LSTM_FWD["x"]
    *_, caches = prnn.lstm_forward(x, LSTM_FWD["a0"], LSTM_P)
    with pytest.raises(ValueError, match=r"da has 4 time steps but the forward pass ran 7"):
        prnn.lstm_backward(np.zeros((5, 10, 4)), caches)


def test_upstream_gradient_shape():
    _, _, cache = prnn.rnn_cell_forward(RNN_FWD["x"][:, :, 0], RNN_FWD["a0"], RNN_P)
    with pytest.raises(ValueError, match=r"da_next has shape \(5, 3\); expected \(5, 10\)"):
        prnn.rnn_cell_backward(np.zeros((5, 3)), cache)
