"""``torch.func`` transforms over the layers, on CPU tensors, and which tensors the fast path takes.

``vmap``'s batched tensors and ``grad``'s grad-tracking tensors look like
plain CPU tensors but have no memory NumPy could view: they must take the
portable path, which the transforms trace op by op (:mod:`portable_rnn.engine.kernels`
says why). The numbers are held to the plain loop over the batch (fast path)
and to ``torch.autograd`` and the hand-written backward.
"""

from __future__ import annotations

import pytest

from portable_rnn.engine import kernels
from portable_rnn.layers import LAYERS

torch = pytest.importorskip("torch", reason="torch: not installed")
func = pytest.importorskip("torch.func", reason="torch.func: not in this torch")

#: float64 agreement between the fast path and the portable path (see tests/engine/test_fastpath.py).
TOL = {"rtol": 1e-10, "atol": 1e-12}

SPECS = {
    "lstm-2l-bi": lambda: LAYERS["lstm"](3, 4, 2, bidirectional=True),
    "gru": lambda: LAYERS["gru"](3, 4),
    "rnn-2l": lambda: LAYERS["rnn"](3, 4, 2),
}


def _setup(name, B=3, T=5, N=2):
    spec = SPECS[name]()
    params = spec.init(0, xp=torch, dtype="float64")
    gen = torch.Generator().manual_seed(1)
    xs = torch.randn(B, T, N, 3, dtype=torch.float64, generator=gen)
    d_out = torch.randn(T, N, spec.num_directions * 4, dtype=torch.float64, generator=gen)
    return spec, params, xs, d_out


@pytest.mark.parametrize("name", list(SPECS))
def test_vmap_over_a_batch_of_inputs_equals_the_loop(name):
    """Forward and the hand-written backward under ``vmap``: the numbers of a loop over the batch."""
    spec, params, xs, d_out = _setup(name)

    def forward_backward(x):
        out, final, tape = spec.forward(params, x)
        grads, dx, _ = spec.backward(params, tape, d_out, None, truncate=2)
        return out, dx, grads["weight_hh_l0"]

    before = dict(kernels.calls)
    batched = func.vmap(forward_backward)(xs)
    assert dict(kernels.calls) == before  # batched tensors never reach .numpy()
    looped = [forward_backward(x) for x in xs]
    assert dict(kernels.calls) != before  # the loop's plain tensors do take the fast path
    for k, got in enumerate(batched):
        torch.testing.assert_close(got, torch.stack([r[k] for r in looped]), **TOL)


@pytest.mark.parametrize("name", list(SPECS))
def test_grad_through_forward_equals_autograd_and_the_hand_written_backward(name):
    """``torch.func.grad`` of a loss of the forward pass, through the portable engine."""
    spec, params, xs, d_out = _setup(name)
    x = xs[0]

    def loss(p, x):
        out, _, _ = spec.forward(p, x)
        return torch.sum(out * d_out)

    by_func, dx_func = func.grad(loss, argnums=(0, 1))(params, x)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    x_leaf = x.clone().requires_grad_(True)
    by_autograd = torch.autograd.grad(loss(leaves, x_leaf), [*leaves.values(), x_leaf])

    _, _, tape = spec.forward(params, x)
    by_hand, dx_hand, _ = spec.backward(params, tape, d_out)
    for k, key in enumerate(params):
        torch.testing.assert_close(by_func[key], by_autograd[k], **TOL)
        torch.testing.assert_close(by_func[key], by_hand[key], **TOL)
    torch.testing.assert_close(dx_func, by_autograd[-1], **TOL)
    torch.testing.assert_close(dx_func, dx_hand, **TOL)


def test_vmap_of_grad_gives_per_example_gradients():
    """``vmap(grad(...))``: per-example weight gradients, as one ``grad`` per example."""
    spec, params, xs, d_out = _setup("lstm-2l-bi")

    def loss(p, x):
        out, _, _ = spec.forward(p, x)
        return torch.sum(out * d_out)

    per_example = func.vmap(func.grad(loss), in_dims=(None, 0))(params, xs)
    for b, x in enumerate(xs):
        one = func.grad(loss)(params, x)
        for key in params:
            torch.testing.assert_close(per_example[key][b], one[key], **TOL)


def test_fast_path_refuses_wrapped_tensors():
    """The check itself, on what each transform hands the function."""
    cell = LAYERS["gru"](3, 4).cell
    import array_api_compat.torch as xt

    seen = []

    def probe(x):
        h = torch.zeros(2, 4, dtype=x.dtype)
        W_ih, W_hh = torch.ones(12, 3, dtype=x.dtype), torch.ones(12, 4, dtype=x.dtype)
        seen.append(kernels.why_not_forward(cell, x, (h,), W_ih, W_hh, None, None, None, xt) is None)
        return torch.sum(x)

    xs = torch.ones(2, 5, 2, 3, dtype=torch.float64)
    func.vmap(probe)(xs)
    func.grad(probe)(xs[0])
    func.functionalize(probe)(xs[0])
    # torch's first vmap, which batches the gradients of autograd.grad(..., is_grads_batched=True)
    torch._vmap_internals._vmap(probe)(xs)
    probe(xs[0])
    assert seen == [False, False, False, False, True]


def test_parameters_take_the_fast_path_only_when_frozen():
    """A ``torch.nn.Parameter`` that does not require grad runs the fast path, one that does autograd's."""
    spec, params, xs, d_out = _setup("lstm-2l-bi")
    x = xs[0]
    frozen = {k: torch.nn.Parameter(v.clone(), requires_grad=False) for k, v in params.items()}
    trained = {k: torch.nn.Parameter(v.clone()) for k, v in params.items()}

    before = kernels.calls["torch", "forward", "lstm"]
    out_frozen, _, _ = spec.forward(frozen, x)
    assert kernels.calls["torch", "forward", "lstm"] == before + 4  # 2 layers x 2 directions
    out_trained, _, _ = spec.forward(trained, x)
    assert kernels.calls["torch", "forward", "lstm"] == before + 4
    assert out_trained.requires_grad and not out_frozen.requires_grad
    torch.testing.assert_close(out_frozen, out_trained.detach(), **TOL)
    with kernels.portable_only():
        out_portable, _, _ = spec.forward(params, x)
    torch.testing.assert_close(out_frozen, out_portable, **TOL)
