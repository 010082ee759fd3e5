"""Check a cell's hand-written backward: :func:`check_cell`.

A cell (:class:`portable_rnn.engine.cells.Cell`) writes its forward step and, by
hand, its local derivatives and step backward. :func:`check_cell` runs the
cell over a short random sequence in float64 through the engine's portable
path (the cell's own methods, never a fast kernel), backpropagates a random
cotangent with the cell's backward, and compares every gradient (input,
initial states, weights, biases, projection) with finite differences of the
forward, and with JAX's and PyTorch's automatic differentiation of the same
forward where those libraries are installed.
"""

from __future__ import annotations

import numpy as np

from ..engine import sequence
from ..backends import jax_float64
from .gradcheck import numerical_gradient

__all__ = ["check_cell", "CellCheckError"]


class CellCheckError(AssertionError):
    """A cell's hand-written gradient disagrees with the reference; the message names each input."""


def _point(cell, input_size, hidden_size, batch, steps, seed) -> tuple[dict, dict]:
    """Random inputs and cotangents, float64 NumPy, named as the messages name them."""
    rng = np.random.default_rng(seed)
    G, H, D, N, T = cell.n_gates, hidden_size, input_size, batch, steps
    R = cell.proj_size or H  # the size of h
    point = {"x": rng.normal(size=(T, N, D))}
    for name in cell.states:
        point[f"{name}_0"] = rng.normal(size=(N, R if name == "h" else H))
    point.update(W_ih=rng.normal(size=(G * H, D)) / 2, W_hh=rng.normal(size=(G * H, R)) / 2,
                 b_ih=rng.normal(size=(G * H,)) / 2, b_hh=rng.normal(size=(G * H,)) / 2)
    point.update({name: rng.normal(size=shape) / 2 for name, (_, shape) in cell.cell_params(H).items()})
    cotangents = {"out": rng.normal(size=(T, N, R))}
    for name in cell.states:
        cotangents[f"{name}_final"] = rng.normal(size=point[f"{name}_0"].shape)
    return point, cotangents


def _forward(cell, a, xp):
    states0 = tuple(a[f"{name}_0"] for name in cell.states)
    return sequence.forward(cell, a["x"], states0, a["W_ih"], a["W_hh"], a["b_ih"], a["b_hh"], xp=xp,
                            cell_params=_own_params(cell, a), fast_path=False)


def _own_params(cell, a) -> dict:
    """The cell's own parameters (:meth:`~portable_rnn.engine.cells.Cell.cell_params`) among the inputs ``a``."""
    return {name: a[name] for name in cell.cell_params(a["W_ih"].shape[0] // cell.n_gates)}


def _loss(cell, a, cotangents, xp):
    out, final, _ = _forward(cell, a, xp)
    total = xp.sum(out * cotangents["out"])
    for name, state in zip(cell.states, final):
        total = total + xp.sum(state * cotangents[f"{name}_final"])
    return total


def _hand_written(cell, point, cotangents) -> dict:
    import array_api_compat.numpy as xp

    _, _, tape = _forward(cell, point, xp)
    d_final = tuple(cotangents[f"{name}_final"] for name in cell.states)
    g = sequence.backward(cell, tape, cotangents["out"], d_final, point["W_ih"], point["W_hh"], xp=xp,
                          cell_params=_own_params(cell, point), fast_path=False)
    grads = {"x": g.dx, "W_ih": g.dW_ih, "W_hh": g.dW_hh, "b_ih": g.db_ih, "b_hh": g.db_hh}
    grads.update({f"{name}_0": d for name, d in zip(cell.states, g.dstate0)})
    grads.update(g.dcell_params)
    return {name: np.asarray(grads[name]) for name in point}


def _finite_differences(cell, point, cotangents) -> dict:
    import array_api_compat.numpy as xp

    return numerical_gradient(lambda a: float(_loss(cell, a, cotangents, xp)), point)


def _jax_autodiff(cell, point, cotangents) -> dict:
    import jax
    import jax.numpy as jnp

    with jax_float64():
        a = {k: jnp.asarray(v) for k, v in point.items()}
        c = {k: jnp.asarray(v) for k, v in cotangents.items()}
        grads = jax.grad(lambda a: _loss(cell, a, c, jnp))(a)
        return {k: np.asarray(v) for k, v in grads.items()}


def _torch_autodiff(cell, point, cotangents) -> dict:
    import array_api_compat.torch as xp
    import torch

    a = {k: torch.tensor(v, requires_grad=True) for k, v in point.items()}
    c = {k: torch.tensor(v) for k, v in cotangents.items()}
    names = list(a)
    grads = torch.autograd.grad(_loss(cell, a, c, xp), [a[k] for k in names])
    return {k: g.numpy() for k, g in zip(names, grads)}


def _references(autodiff: bool) -> dict:
    refs = {"finite differences": _finite_differences}
    if autodiff:
        for name, library, fn in (("JAX autodiff", "jax", _jax_autodiff), ("torch autodiff", "torch", _torch_autodiff)):
            try:
                __import__(library)
            except ImportError:
                continue
            refs[name] = fn
    return refs


def check_cell(cell, *, input_size: int = 3, hidden_size: int = 4, batch: int = 2, steps: int = 4,
               seed: int = 0, tolerance: float = 1e-7, autodiff: bool = True) -> dict:
    """Check ``cell``'s hand-written backward against finite differences and autodiff, in float64.

    The cell runs over a random sequence through :func:`portable_rnn.engine.sequence.forward`
    (its own :meth:`~portable_rnn.engine.cells.Cell.step`), and the loss is a random
    linear function of its outputs and final states, so every output and
    state carries gradient. The gradients of
    :func:`portable_rnn.engine.sequence.backward` (the cell's ``step_derivatives``
    and ``step_backward``) must agree with each reference to ``tolerance``,
    relative to the reference's largest entry.

    Parameters
    ----------
    cell : portable_rnn.engine.cells.Cell
    input_size, hidden_size, batch, steps : int
        D, H, N and T of the random sequence.
    seed : int
        Seeds the inputs, weights and cotangents.
    tolerance : float
        Largest relative error accepted. The fourth-order finite differences
        agree with an exact float64 gradient to about 1e-10.
    autodiff : bool
        Also compare with ``jax.grad`` and ``torch.autograd`` of the same
        forward, for each of those libraries that is installed.

    Returns
    -------
    dict of str to dict of str to float
        ``{reference: {input: relative error}}`` for every input: ``x``,
        ``<state>_0`` for each state (``h_0``, ``c_0``), ``W_ih``, ``W_hh``,
        ``b_ih``, ``b_hh`` and the cell's own parameters (``W_hr``, ...).

    Raises
    ------
    CellCheckError
        Naming every input whose gradient is wrong, worst first, with the
        reference and the error.
    """
    point, cotangents = _point(cell, input_size, hidden_size, batch, steps, seed)
    ours = _hand_written(cell, point, cotangents)
    report, wrong = {}, []
    for reference, compute in _references(autodiff).items():
        expected = compute(cell, point, cotangents)
        errors = {}
        for name, value in expected.items():
            scale = max(float(np.max(np.abs(value), initial=0.0)), np.finfo(np.float64).tiny)
            errors[name] = float(np.max(np.abs(ours[name] - value), initial=0.0)) / scale
        report[reference] = errors
        wrong += [(error, name, reference) for name, error in errors.items() if not error <= tolerance]
    if wrong:
        lines = [f"{name}: relative error {error:.2e} against {reference}"
                 for error, name, reference in sorted(wrong, reverse=True)]
        raise CellCheckError(f"{cell!r}: the hand-written gradient is wrong for "
                             f"{', '.join(dict.fromkeys(name for _, name, _ in sorted(wrong, reverse=True)))} "
                             f"(tolerance {tolerance:.0e}):\n  " + "\n  ".join(lines))
    return report
