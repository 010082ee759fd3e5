"""portable_rnn.torch: drop-in torch.nn modules whose autograd backward is the hand-written BPTT.

``lstm_proj`` is ``LSTM(..., proj_size=2)``; dropout is compared in eval mode
and, in training mode, with torch's generator seeded alike (both modules draw
the same factors); ``test_dropout.py`` holds the hand-stacked reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import portable_rnn.torch as prt  # noqa: E402

MODES = {"rnn": (prt.RNN, torch.nn.RNN), "lstm": (prt.LSTM, torch.nn.LSTM), "gru": (prt.GRU, torch.nn.GRU),
         "lstm_proj": (prt.LSTM, torch.nn.LSTM)}
PROJ = 2  # proj_size of lstm_proj (hidden size 4)
COMBOS = [  # (layers, bidirectional, batch_first, bias)
    (1, False, False, True), (2, True, True, True), (3, False, True, False), (2, True, False, False),
]


def _pair(mode, layers, bidirectional, batch_first, bias, **extra):
    ours_cls, ref_cls = MODES[mode]
    if mode == "lstm_proj":
        extra["proj_size"] = PROJ
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias,
                  dtype=torch.float64, **extra)
    torch.manual_seed(0)
    ref = ref_cls(3, 4, **kwargs)
    torch.manual_seed(0)
    ours = ours_cls(3, 4, **kwargs)
    return ours, ref


def _grads(module):
    return {k: p.grad.clone() for k, p in module.named_parameters()}


def _parts(mode, state):
    """A state as a tuple: (h, c) for the LSTMs, (h,) otherwise."""
    return tuple(state) if mode.startswith("lstm") else (state,)


def _hx(mode, rng, layers, dirs, N):
    """A random initial state, each part requiring grad (h has PROJ features for lstm_proj)."""
    h = rng.normal(size=(layers * dirs, N, PROJ if mode == "lstm_proj" else 4))
    if not mode.startswith("lstm"):
        return torch.tensor(h, requires_grad=True)
    c = rng.normal(size=(layers * dirs, N, 4))
    return torch.tensor(h, requires_grad=True), torch.tensor(c, requires_grad=True)


def _clone(hx):
    if hx is None:
        return None
    if isinstance(hx, tuple):
        return tuple(p.detach().clone().requires_grad_(True) for p in hx)
    return hx.detach().clone().requires_grad_(True)


def _assert_same_run(mode, ours, ref, x, hx, rng, seed=None):
    """Outputs, final states and every gradient (parameters, input, hx) of both modules to 1e-10.

    With ``seed``, torch's generator is seeded with it before each module runs.
    """
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    hx1, hx2 = hx, _clone(hx)
    if seed is not None:
        torch.manual_seed(seed)
    out1, s1 = ours(x1, hx1)
    if seed is not None:
        torch.manual_seed(seed)
    out2, s2 = ref(x2, hx2)
    torch.testing.assert_close(out1, out2, rtol=1e-10, atol=1e-12)
    for a, b in zip(_parts(mode, s1), _parts(mode, s2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    w = torch.tensor(rng.normal(size=tuple(out1.shape)))
    ((out1 * w).sum() + _parts(mode, s1)[0].square().sum()).backward()
    ((out2 * w).sum() + _parts(mode, s2)[0].square().sum()).backward()
    g1, g2 = _grads(ours), _grads(ref)
    assert list(g1) == list(g2)
    for key in g2:
        torch.testing.assert_close(g1[key], g2[key], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    if hx is not None:
        for a, b in zip(_parts(mode, hx1), _parts(mode, hx2)):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "L{}-bi{:d}-bf{:d}-bias{:d}".format(*c))
@pytest.mark.parametrize("given_hx", [False, True])
def test_same_init_outputs_states_and_gradients_as_torch_nn(mode, combo, given_hx):
    layers, bidirectional, batch_first, bias = combo
    ours, ref = _pair(mode, *combo)
    for (k1, p1), (k2, p2) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert k1 == k2 and torch.equal(p1, p2)  # same names, order and numbers from torch's RNG
    rng = np.random.default_rng(1)
    T, N, dirs = 5, 2, 2 if bidirectional else 1
    x = torch.tensor(rng.normal(size=(N, T, 3) if batch_first else (T, N, 3)))
    _assert_same_run(mode, ours, ref, x, _hx(mode, rng, layers, dirs, N) if given_hx else None, rng)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("combo", COMBOS[1:3], ids=lambda c: "L{}-bi{:d}-bf{:d}-bias{:d}".format(*c))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_dropout_as_torch_nn_in_eval_and_with_the_same_seed_in_training(mode, combo, training):
    """In training mode both modules draw their factors from torch's generator in the same order."""
    layers, bidirectional, batch_first, bias = combo
    ours, ref = _pair(mode, *combo, dropout=0.4)
    ours.train(training)
    ref.train(training)
    rng = np.random.default_rng(4)
    T, N, dirs = 6, 3, 2 if bidirectional else 1
    x = torch.tensor(rng.normal(size=(N, T, 3) if batch_first else (T, N, 3)))
    hx = _hx(mode, rng, layers, dirs, N)
    _assert_same_run(mode, ours, ref, x, hx, rng, seed=11)
    first, _ = ours(x, _clone(hx))
    second, _ = ours(x, _clone(hx))
    assert torch.equal(first, second) is (not training)  # fresh factors per call, none in eval mode


@pytest.mark.parametrize("mode", list(MODES))
def test_packed_and_unbatched_inputs(mode):
    ours, ref = _pair(mode, 2, True, False, True, dropout=0.3)
    ours.eval()
    ref.eval()
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(6, 3, 3)))
    lengths = torch.tensor([6, 2, 4])
    outs = []
    for module in (ours, ref):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        out, state = module(packed)
        padded, out_lengths = pad_packed_sequence(out)
        padded.sum().backward()
        outs.append((padded, out_lengths, state, _grads(module)))
    (p1, l1, s1, g1), (p2, l2, s2, g2) = outs
    torch.testing.assert_close(p1, p2, rtol=1e-10, atol=1e-12)
    assert torch.equal(l1, l2)
    for a, b in zip(_parts(mode, s1), _parts(mode, s2)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for key in g2:
        torch.testing.assert_close(g1[key], g2[key], rtol=1e-10, atol=1e-12)
    single = torch.tensor(rng.normal(size=(6, 3)))
    o1, st1 = ours(single)
    o2, st2 = ref(single)
    torch.testing.assert_close(o1, o2, rtol=1e-10, atol=1e-12)
    assert o1.shape == o2.shape
    assert [s.shape for s in _parts(mode, st1)] == [s.shape for s in _parts(mode, st2)]


def test_packed_input_in_training_mode_drops_between_layers():
    """torch.nn drops packed data in its packed layout (other numbers): here only the mode's effect."""
    torch.manual_seed(0)
    model = prt.GRU(3, 4, 2, dropout=0.5, dtype=torch.float64)
    x, lengths = torch.randn(6, 3, 3, dtype=torch.float64), torch.tensor([6, 2, 4])

    def run():
        out, _ = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
        return pad_packed_sequence(out, total_length=6)[0]

    trained = run()
    trained.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    assert not torch.allclose(trained, run())


def test_state_dicts_load_strictly_both_ways():
    for mode in MODES:
        ours, ref = _pair(mode, 2, True, False, True)
        ours.load_state_dict(ref.state_dict(), strict=True)
        ref.load_state_dict(ours.state_dict(), strict=True)
        assert list(ours.state_dict()) == list(ref.state_dict())
        assert all(tuple(a.shape) == tuple(b.shape) for a, b in zip(ours.parameters(), ref.parameters()))


def test_torch_optim_trains_it():
    torch.manual_seed(0)
    model = prt.GRU(3, 8, batch_first=True)
    head = torch.nn.Linear(8, 1)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=0.05)
    x, y = torch.randn(16, 7, 3), torch.randn(16, 1)

    def loss():
        out, h = model(x)
        return torch.nn.functional.mse_loss(head(out[:, -1]), y)

    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first


@pytest.mark.parametrize("mode", list(MODES))
def test_a_gradient_penalty_double_backward_equals_torch_nn(mode):
    """``create_graph=True`` then a backward through the gradient (as in WGAN-GP): torch.nn's numbers."""
    ours, ref = _pair(mode, 2, True, True, True)
    x = torch.tensor(np.random.default_rng(3).normal(size=(2, 5, 3)))
    penalties = []
    for module in (ours, ref):
        xi = x.clone().requires_grad_(True)
        out, _ = module(xi)
        (dx,) = torch.autograd.grad(out.tanh().sum(), xi, create_graph=True)
        dx.square().sum().backward()
        penalties.append(_grads(module))
    for key in penalties[1]:
        torch.testing.assert_close(penalties[0][key], penalties[1][key], rtol=1e-9, atol=1e-11)


def test_torch_nn_warning_and_repr():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        prt.RNN(3, 4, dropout=0.5)
    for mode in MODES:
        ours, ref = _pair(mode, 2, True, True, False)
        assert repr(ours) == repr(ref)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    import portable_rnn.torch as prt

    def run(rank, world, port, out):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        torch.manual_seed(0)
        model = prt.LSTM(3, 4, batch_first=True, dtype=torch.float64)
        x = torch.arange(8 * 5 * 3, dtype=torch.float64).reshape(8, 5, 3).sin()
        if rank == 0:  # the single-process reference on the global batch
            ref = prt.LSTM(3, 4, batch_first=True, dtype=torch.float64)
            ref.load_state_dict(model.state_dict())
            ref(x)[0].square().mean().backward()
            torch.save({k: p.grad for k, p in ref.named_parameters()}, out + ".ref")
        ddp = DistributedDataParallel(model)
        shard = x[rank * 4:(rank + 1) * 4]
        ddp(shard)[0].square().mean().backward()
        if rank == 0:
            torch.save({k: p.grad for k, p in model.named_parameters()}, out + ".ddp")
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        # gloo's threads can abort the interpreter's own teardown ("terminate called without
        # an active exception") on a loaded machine; the results are written by now.
        os._exit(0)

    if __name__ == "__main__":
        port, out = int(sys.argv[1]), sys.argv[2]
        torch.multiprocessing.spawn(run, args=(2, port, out), nprocs=2, join=True)
""")


@pytest.mark.processes
def test_distributed_data_parallel_gives_the_single_process_gradients(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "grads")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, str(script), str(port), out], env=env, timeout=120,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    ref, ddp = torch.load(out + ".ref"), torch.load(out + ".ddp")
    for key in ref:
        torch.testing.assert_close(ddp[key], ref[key], rtol=1e-10, atol=1e-12)
