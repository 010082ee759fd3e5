"""Independent autodiff references, written straight from the textbook equations.

Nothing here calls portable_rnn's maths (only its JAX float64 switch): each
model is re-written in JAX and in PyTorch, and their autodiff gradients are
the references the hand-written backward passes are compared with.
"""

from __future__ import annotations

import numpy as np

from portable_rnn.backends import jax_float64


def _ops(lib):
    if lib == "jax":
        import jax
        import jax.numpy as jnp

        return {"tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu,
                "concat": lambda a, axis: jnp.concatenate(a, axis=axis),
                "stack": lambda a, axis: jnp.stack(a, axis=axis),
                "detach": jax.lax.stop_gradient, "zeros_like": jnp.zeros_like}
    import torch

    return {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu,
            "concat": lambda a, axis: torch.cat(a, dim=axis),
            "stack": lambda a, axis: torch.stack(a, dim=axis),
            "detach": lambda t: t.detach(), "zeros_like": torch.zeros_like}


def rnn_sequence(ops, x, a0, p, nonlinearity="tanh", truncate=None):
    """Feature-major vanilla RNN: returns a (n_a, m, T)."""
    act = ops[nonlinearity]
    a, outs = a0, []
    for t in range(x.shape[2]):
        if truncate and t and t % truncate == 0:
            a = ops["detach"](a)
        a = act(p["Waa"] @ a + p["Wax"] @ x[:, :, t] + p["ba"])
        outs.append(a)
    return ops["stack"](outs, 2)


def lstm_sequence(ops, x, a0, p, c0=None, truncate=None):
    """Feature-major LSTM on the stacked [a; x]: returns a, c (n_a, m, T)."""
    a, c = a0, (ops["zeros_like"](a0) if c0 is None else c0)
    a_all, c_all = [], []
    for t in range(x.shape[2]):
        if truncate and t and t % truncate == 0:
            a, c = ops["detach"](a), ops["detach"](c)
        s = ops["concat"]([a, x[:, :, t]], 0)
        f = ops["sigmoid"](p["Wf"] @ s + p["bf"])
        i = ops["sigmoid"](p["Wi"] @ s + p["bi"])
        g = ops["tanh"](p["Wc"] @ s + p["bc"])
        o = ops["sigmoid"](p["Wo"] @ s + p["bo"])
        c = f * c + i * g
        a = o * ops["tanh"](c)
        a_all.append(a)
        c_all.append(c)
    return ops["stack"](a_all, 2), ops["stack"](c_all, 2)


def autodiff(lib: str, loss_of, inputs: dict) -> dict:
    """Gradient of ``loss_of(ops, arrays)`` w.r.t. every float64 input, as NumPy.

    Tests cache the result per configuration: it does not depend on the backend under test.
    """
    ops = _ops(lib)
    if lib == "jax":
        import jax
        import jax.numpy as jnp

        with jax_float64():  # references are float64
            arrays = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in inputs.items()}
            grads = jax.grad(lambda d: loss_of(ops, d))(arrays)
            return {k: np.asarray(v) for k, v in grads.items()}
    import torch

    arrays = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in inputs.items()}
    loss_of(ops, arrays).backward()
    return {k: np.zeros(v.shape) if v.grad is None else v.grad.numpy() for k, v in arrays.items()}
