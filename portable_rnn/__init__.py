"""portable_rnn: recurrent networks with hand-written BPTT on any Array API backend."""

from . import cs231n, interop, io, losses, optim
from .activations import log_softmax, relu, sigmoid, softmax
from .layers import GRU, LSTM, RNN
from .minimal import MinGRU, MinLSTM
from .model import CharModel
from .testing.cellcheck import check_cell
from .stepbystep import (
    lstm_backward,
    lstm_cell_backward,
    lstm_cell_forward,
    lstm_forward,
    rnn_backward,
    rnn_cell_backward,
    rnn_cell_forward,
    rnn_forward,
)

from ._version import __version__

__all__ = [
    "__version__",
    "RNN",
    "LSTM",
    "GRU",
    "MinGRU",
    "MinLSTM",
    "CharModel",
    "check_cell",
    "cs231n",
    "interop",
    "io",
    "losses",
    "optim",
    "sigmoid",
    "softmax",
    "log_softmax",
    "relu",
    "rnn_cell_forward",
    "rnn_forward",
    "lstm_cell_forward",
    "lstm_forward",
    "rnn_cell_backward",
    "rnn_backward",
    "lstm_cell_backward",
    "lstm_backward",
]
