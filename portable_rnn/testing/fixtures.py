"""The documented fixtures of the two classic exercises, on any backend.

Every input is drawn on the host as the exercises drew it: a generator seeded
with 1, then ``randn`` in a fixed order, float64. The generator is a local
:class:`numpy.random.RandomState` (the legacy generator behind
``np.random.seed``/``np.random.randn``, so the numbers are the exercises'),
never NumPy's global one, so drawing a fixture changes no other random
stream. The caller's ``convert`` function then puts each input on its backend.
Each fixture maps labels such as ``"a_next[4]"`` to the printed reference
numbers. Used by ``portable-rnn check`` and by the test suite.

``lstm_backward`` carries a known erratum: the printed numbers are truncated
BPTT with one-step windows; the full-BPTT numbers (which autodiff confirms)
are the default expectation, and the printed ones are checked with
``truncate=1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .. import stepbystep as sbs

__all__ = ["Fixture", "FIXTURES"]


def _draws(*named_shapes):
    """A generator seeded with 1, then one ``randn`` per (name, shape), in order."""
    rng = np.random.RandomState(1)
    return {name: rng.randn(*shape) for name, shape in named_shapes}


_RNN_WEIGHT_DRAWS = (("Waa", (5, 5)), ("Wax", (5, 3)), ("Wya", (2, 5)), ("ba", (5, 1)), ("by", (2, 1)))
_LSTM_WEIGHT_DRAWS = (("Wf", (5, 8)), ("bf", (5, 1)), ("Wi", (5, 8)), ("bi", (5, 1)),
                      ("Wo", (5, 8)), ("bo", (5, 1)), ("Wc", (5, 8)), ("bc", (5, 1)))
_LSTM_CELL_DRAWS = (("xt", (3, 10)), ("a_prev", (5, 10)), ("c_prev", (5, 10)),
                    *_LSTM_WEIGHT_DRAWS, ("Wy", (2, 5)), ("by", (2, 1)))


def _rnn_inputs(with_sequence: bool):
    first = ("x", (3, 10, 4)) if with_sequence else ("xt", (3, 10))
    return _draws(first, ("a0" if with_sequence else "a_prev", (5, 10)), *_RNN_WEIGHT_DRAWS)


def _lstm_params(d):
    return {k: d[k] for k in ("Wf", "bf", "Wi", "bi", "Wo", "bo", "Wc", "bc", "Wy", "by")}


def _lstm_cell_inputs():
    return _draws(*_LSTM_CELL_DRAWS)


def _lstm_forward_inputs():
    return _draws(("x", (3, 10, 7)), ("a0", (5, 10)), *_LSTM_WEIGHT_DRAWS, ("Wy", (2, 5)), ("by", (2, 1)))


def _rnn_cell_backward_inputs():
    # Quirk of the exercise: its parameters carry the `ba` of the rnn_forward
    # fixture, not the `b` drawn here.
    d = _draws(("xt", (3, 10)), ("a_prev", (5, 10)), ("Wax", (5, 3)), ("Waa", (5, 5)),
               ("Wya", (2, 5)), ("b", (5, 1)), ("by", (2, 1)), ("da_next", (5, 10)))
    d["ba"] = _rnn_inputs(with_sequence=True)["ba"]
    return d


def _rnn_backward_inputs():
    return _draws(("x", (3, 10, 4)), ("a0", (5, 10)), ("Wax", (5, 3)), ("Waa", (5, 5)),
                  ("Wya", (2, 5)), ("ba", (5, 1)), ("by", (2, 1)), ("da", (5, 10, 4)))


def _lstm_cell_backward_inputs():
    return _draws(*_LSTM_CELL_DRAWS, ("da_next", (5, 10)), ("dc_next", (5, 10)))


def _lstm_backward_inputs():
    # Quirk of the exercise: Wy and by are those of the lstm_cell_backward
    # fixture, not drawn here; they do not reach the gradients.
    d = _draws(("x", (3, 10, 7)), ("a0", (5, 10)), *_LSTM_WEIGHT_DRAWS, ("da", (5, 10, 4)))
    cell = _lstm_cell_inputs()
    d["Wy"], d["by"] = cell["Wy"], cell["by"]
    return d


def _rnn_params(d):
    return {k: d[k] for k in ("Wax", "Waa", "Wya", "ba", "by")}


# ---------------------------------------------------------------- runners: (inputs, convert, options) -> results


def _run_rnn_cell_forward(d, cv, **kw):
    a_next, yt_pred, cache = sbs.rnn_cell_forward(cv(d["xt"]), cv(d["a_prev"]), _conv(_rnn_params(d), cv))
    return {"a_next": a_next, "yt_pred": yt_pred, "len(cache)": len(cache)}


def _run_rnn_forward(d, cv, **kw):
    a, y_pred, caches = sbs.rnn_forward(cv(d["x"]), cv(d["a0"]), _conv(_rnn_params(d), cv))
    return {"a": a, "y_pred": y_pred, "caches[1]": caches[1], "len(caches)": len(caches)}


def _run_lstm_cell_forward(d, cv, **kw):
    a_next, c_next, yt, cache = sbs.lstm_cell_forward(
        cv(d["xt"]), cv(d["a_prev"]), cv(d["c_prev"]), _conv(_lstm_params(d), cv))
    return {"a_next": a_next, "c_next": c_next, "yt": yt, "cache[1]": cache[1], "len(cache)": len(cache)}


def _run_lstm_forward(d, cv, **kw):
    a, y, c, caches = sbs.lstm_forward(cv(d["x"]), cv(d["a0"]), _conv(_lstm_params(d), cv))
    return {"a": a, "y": y, "c": c, "caches[1]": caches[1], "len(caches)": len(caches)}


def _run_rnn_cell_backward(d, cv, **kw):
    _, _, cache = sbs.rnn_cell_forward(cv(d["xt"]), cv(d["a_prev"]), _conv(_rnn_params(d), cv))
    return sbs.rnn_cell_backward(cv(d["da_next"]), cache)


def _run_rnn_backward(d, cv, **kw):
    _, _, caches = sbs.rnn_forward(cv(d["x"]), cv(d["a0"]), _conv(_rnn_params(d), cv))
    return sbs.rnn_backward(cv(d["da"]), caches, **kw)


def _run_lstm_cell_backward(d, cv, **kw):
    *_, cache = sbs.lstm_cell_forward(cv(d["xt"]), cv(d["a_prev"]), cv(d["c_prev"]), _conv(_lstm_params(d), cv))
    return sbs.lstm_cell_backward(cv(d["da_next"]), cv(d["dc_next"]), cache)


def _run_lstm_backward(d, cv, **kw):
    # da covers 4 of x's 7 steps; the forward is causal, so running it on the
    # first 4 steps and back-propagating through all of them is the same.
    steps = d["da"].shape[2]
    *_, caches = sbs.lstm_forward(cv(d["x"][:, :, :steps]), cv(d["a0"]), _conv(_lstm_params(d), cv))
    return sbs.lstm_backward(cv(d["da"]), caches, **kw)


def _conv(params, cv):
    return {k: cv(v) for k, v in params.items()}


@dataclass(frozen=True)
class Fixture:
    """One documented example.

    Attributes
    ----------
    name : str
        The function it exercises.
    draw : callable
        ``draw() -> dict`` of float64 NumPy inputs.
    run : callable
        ``run(inputs, convert, **options) -> dict`` of results on the backend.
    expected : dict
        ``label -> (result key, index, value)``: ``results[key][index]`` must
        equal ``value`` (a float or a sequence).
    shapes : dict
        ``result key -> shape``.
    options : dict
        Keyword arguments for ``run`` (e.g. ``{"truncate": 1}``).
    """

    name: str
    draw: Callable
    run: Callable
    expected: dict
    shapes: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def mismatches(self, results: dict, to_numpy: Callable, rtol: float, atol: float) -> list[str]:
        """Labels whose result differs from the documented number, with details."""
        problems = []
        for key, shape in self.shapes.items():
            if tuple(results[key].shape) != shape:
                problems.append(f"{key}.shape = {tuple(results[key].shape)}, expected {shape}")
        for label, (key, index, value) in self.expected.items():
            got = results[key]
            if key.startswith("len("):
                if got != value:
                    problems.append(f"{label} = {got}, expected {value}")
                continue
            got = to_numpy(got)[index]
            if not np.allclose(got, value, rtol=rtol, atol=atol):
                problems.append(f"{label} = {np.asarray(got).tolist()}, expected {value}")
        return problems


_LSTM_GRAD_SHAPES = {**{f"dW{g}": (5, 8) for g in "fico"}, **{f"db{g}": (5, 1) for g in "fico"}}

FIXTURES = (
    Fixture(
        "rnn_cell_forward", lambda: _rnn_inputs(False),
        _run_rnn_cell_forward,
        {
            "a_next[4]": ("a_next", (4,), [0.59584544, 0.18141802, 0.61311866, 0.99808218, 0.85016201,
                                             0.99980978, -0.18887155, 0.99815551, 0.6531151, 0.82872037]),
            "yt_pred[1]": ("yt_pred", (1,), [0.9888161, 0.01682021, 0.21140899, 0.36817467, 0.98988387,
                                              0.88945212, 0.36920224, 0.9966312, 0.9982559, 0.17746526]),
            "len(cache)": ("len(cache)", (), 4),
        },
        {"a_next": (5, 10), "yt_pred": (2, 10)},
    ),
    Fixture(
        "rnn_forward", lambda: _rnn_inputs(True), _run_rnn_forward,
        {
            "a[4][1]": ("a", (4, 1), [-0.99999375, 0.77911235, -0.99861469, -0.99833267]),
            "y_pred[1][3]": ("y_pred", (1, 3), [0.79560373, 0.86224861, 0.11118257, 0.81515947]),
            "caches[1][1][3]": ("caches[1]", (1, 3), [-1.1425182, -0.34934272, -0.20889423, 0.58662319]),
            "len(caches)": ("len(caches)", (), 2),
        },
        {"a": (5, 10, 4), "y_pred": (2, 10, 4)},
    ),
    Fixture(
        "lstm_cell_forward", _lstm_cell_inputs, _run_lstm_cell_forward,
        {
            "a_next[4]": ("a_next", (4,), [-0.66408471, 0.0036921, 0.02088357, 0.22834167, -0.85575339,
                                             0.00138482, 0.76566531, 0.34631421, -0.00215674, 0.43827275]),
            "c_next[2]": ("c_next", (2,), [0.63267805, 1.00570849, 0.35504474, 0.20690913, -1.64566718,
                                             0.11832942, 0.76449811, -0.0981561, -0.74348425, -0.26810932]),
            "yt[1]": ("yt", (1,), [0.79913913, 0.15986619, 0.22412122, 0.15606108, 0.97057211,
                                     0.31146381, 0.00943007, 0.12666353, 0.39380172, 0.07828381]),
            "cache[1][3]": ("cache[1]", (3,), [-0.16263996, 1.03729328, 0.72938082, -0.54101719, 0.02752074,
                                                 -0.30821874, 0.07651101, -1.03752894, 1.41219977, -0.37647422]),
            "len(cache)": ("len(cache)", (), 10),
        },
        {"a_next": (5, 10), "c_next": (5, 10), "yt": (2, 10)},
    ),
    Fixture(
        "lstm_forward", _lstm_forward_inputs, _run_lstm_forward,
        {
            "a[4][3][6]": ("a", (4, 3, 6), 0.17211776753291672),
            "y[1][4][3]": ("y", (1, 4, 3), 0.9508734618501101),
            "caches[1][1][1]": ("caches[1]", (1, 1), [0.82797464, 0.23009474, 0.76201118, -0.22232814,
                                                        -0.20075807, 0.18656139, 0.41005165]),
            "c[1][2][1]": ("c", (1, 2, 1), -0.8555449167181981),
            "len(caches)": ("len(caches)", (), 2),
        },
        {"a": (5, 10, 7), "y": (2, 10, 7), "c": (5, 10, 7)},
    ),
    Fixture(
        "rnn_cell_backward", _rnn_cell_backward_inputs, _run_rnn_cell_backward,
        {
            "dxt[1][2]": ("dxt", (1, 2), -0.4605641030588796),
            "da_prev[2][3]": ("da_prev", (2, 3), 0.08429686538067718),
            "dWax[3][1]": ("dWax", (3, 1), 0.3930818739219304),
            "dWaa[1][2]": ("dWaa", (1, 2), -0.2848395578696067),
            "dba[4]": ("dba", (4,), [0.80517166]),
        },
        {"dxt": (3, 10), "da_prev": (5, 10), "dWax": (5, 3), "dWaa": (5, 5), "dba": (5, 1)},
    ),
    Fixture(
        "rnn_backward", _rnn_backward_inputs, _run_rnn_backward,
        {
            "dx[1][2]": ("dx", (1, 2), [-2.07101689, -0.59255627, 0.02466855, 0.01483317]),
            "da0[2][3]": ("da0", (2, 3), -0.31494237512664996),
            "dWax[3][1]": ("dWax", (3, 1), 11.264104496527777),
            "dWaa[1][2]": ("dWaa", (1, 2), 2.3033331265798935),
            "dba[4]": ("dba", (4,), [-0.74747722]),
        },
        {"dx": (3, 10, 4), "da0": (5, 10), "dWax": (5, 3), "dWaa": (5, 5), "dba": (5, 1)},
    ),
    Fixture(
        "lstm_cell_backward", _lstm_cell_backward_inputs, _run_lstm_cell_backward,
        {
            "dxt[1][2]": ("dxt", (1, 2), 3.230559115109188),
            "da_prev[2][3]": ("da_prev", (2, 3), -0.06396214197109236),
            "dc_prev[2][3]": ("dc_prev", (2, 3), 0.7975220387970015),
            "dWf[3][1]": ("dWf", (3, 1), -0.1479548381644968),
            "dWi[1][2]": ("dWi", (1, 2), 1.0574980552259903),
            "dWc[3][1]": ("dWc", (3, 1), 2.3045621636876668),
            "dWo[1][2]": ("dWo", (1, 2), 0.3313115952892109),
            "dbf[4]": ("dbf", (4,), [0.18864637]),
            "dbi[4]": ("dbi", (4,), [-0.40142491]),
            "dbc[4]": ("dbc", (4,), [0.25587763]),
            "dbo[4]": ("dbo", (4,), [0.13893342]),
        },
        {"dxt": (3, 10), "da_prev": (5, 10), "dc_prev": (5, 10), **_LSTM_GRAD_SHAPES},
    ),
    Fixture(
        "lstm_backward", _lstm_backward_inputs, _run_lstm_backward,
        {   # full BPTT (the erratum's corrected values)
            "dx[1][2]": ("dx", (1, 2), [0.00218254, 0.28205375, -0.48292508, -0.43281115]),
            "da0[2][3]": ("da0", (2, 3), 0.3127703102572602),
            "dWf[3][1]": ("dWf", (3, 1), -0.08098023109383466),
            "dWi[1][2]": ("dWi", (1, 2), 0.40512433092981825),
            "dWc[3][1]": ("dWc", (3, 1), -0.07937467355121496),
            "dWo[1][2]": ("dWo", (1, 2), 0.038948775762986956),
            "dbf[4]": ("dbf", (4,), [-0.15745657]),
            "dbi[4]": ("dbi", (4,), [-0.50848333]),
            "dbc[4]": ("dbc", (4,), [-0.42510818]),
            "dbo[4]": ("dbo", (4,), [-0.17958196]),
        },
        {"dx": (3, 10, 4), "da0": (5, 10), "dc0": (5, 10), **_LSTM_GRAD_SHAPES},
    ),
    Fixture(
        "lstm_backward[truncate=1]", _lstm_backward_inputs, _run_lstm_backward,
        {   # the numbers the exercise printed
            "dx[1][2]": ("dx", (1, 2), [-0.00173313, 0.08287442, -0.30545663, -0.43281115]),
            "da0[2][3]": ("da0", (2, 3), -0.09591150195400468),
            "dWf[3][1]": ("dWf", (3, 1), -0.06981985612744009),
            "dWi[1][2]": ("dWi", (1, 2), 0.10237182024854771),
            "dWc[3][1]": ("dWc", (3, 1), -0.062498379492745226),
            "dWo[1][2]": ("dWo", (1, 2), 0.04843891314443012),
            "dbf[4]": ("dbf", (4,), [-0.0565788]),
            "dbi[4]": ("dbi", (4,), [-0.15399065]),
            "dbc[4]": ("dbc", (4,), [-0.29691142]),
            "dbo[4]": ("dbo", (4,), [-0.29798344]),
        },
        {"dx": (3, 10, 4), "da0": (5, 10), "dc0": (5, 10), **_LSTM_GRAD_SHAPES},
        {"truncate": 1},
    ),
)
