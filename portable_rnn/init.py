r"""Seeded initialisation of recurrent layer parameters, identical on every backend.

The numbers are drawn on the host with NumPy's :class:`numpy.random.Generator`
(PCG64) in float64, in one fixed order, and only then converted with
``xp.asarray(..., dtype=dtype, device=device)``. The same seed therefore gives
the same numbers on NumPy, CuPy, JAX, PyTorch and array-api-strict (float32
results are the float64 draws rounded to nearest, which every library does
identically). This is the one module of the core that imports NumPy; it runs
once, outside any hot path.

Schemes (``G`` gates, hidden size ``H``, per-layer input size ``D``):

``"uniform"`` (PyTorch's default)
    every weight and bias :math:`\sim U(-k, k)`, :math:`k = 1/\sqrt{H}`.
``"xavier"``
    each (H, D) block of ``weight_ih`` and (H, H) block of ``weight_hh`` (one
    block per gate) :math:`\sim U(-a, a)`, :math:`a = \sqrt{6 / (\text{fan\_in} + H)}`
    (Glorot & Bengio); fan-in/fan-out are those of one gate, not of the
    stacked (G*H, D) matrix, since each gate is its own linear map.
``"orthogonal"``
    each gate block of both weights is (semi-)orthogonal (Saxe et al.): the
    Q factor of a Gaussian matrix, signs fixed by :math:`\mathrm{diag}(R)` as
    ``torch.nn.init.orthogonal_`` does. For a square (H, H) block
    :math:`W W^T = I`; for (H, D) the rows (H <= D) or columns are orthonormal.

An LSTM with a projection (``proj_size = P``) draws ``weight_hh`` as (4H, P)
gate blocks of (H, P) and, after the biases, ``weight_hr`` (P, H) as one
block: :math:`U(-1/\sqrt{H}, 1/\sqrt{H})` as PyTorch under ``"uniform"``,
one Glorot or orthogonal (P, H) matrix under the other schemes.

Under every scheme the biases are drawn as in ``"uniform"``; the scheme only
changes the weights. For LSTM, ``forget_bias=b`` then sets the forget-gate
slice ``[H:2H]`` of ``bias_ih`` to ``b`` and of ``bias_hh`` to 0, so the sum
seen by the gate, :math:`b_{ih} + b_{hh}`, is exactly ``b`` (Jozefowicz et
al. recommend ``b = 1``).
"""

from __future__ import annotations

import numpy as np

from ._validation import check_int

__all__ = ["SCHEMES", "param_names", "projection_name", "layer_param_name", "draw", "dropout_factors", "check_seed",
           "zeros"]

#: The weight initialisation schemes.
SCHEMES = ("uniform", "xavier", "orthogonal")


def param_names(layer: int, direction: int) -> tuple[str, str, str, str]:
    """PyTorch's state_dict names ``(weight_ih, weight_hh, bias_ih, bias_hh)`` of one layer/direction."""
    suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
    return (f"weight_ih{suffix}", f"weight_hh{suffix}", f"bias_ih{suffix}", f"bias_hh{suffix}")


def layer_param_name(stem: str, layer: int, direction: int) -> str:
    """The name ``{stem}_l{layer}[_reverse]`` of a parameter of one layer and direction, as PyTorch names them."""
    return f"{stem}_l{layer}" + ("_reverse" if direction == 1 else "")


def projection_name(layer: int, direction: int) -> str:
    """PyTorch's state_dict name ``weight_hr_l{layer}[_reverse]`` of an LSTM projection."""
    return layer_param_name("weight_hr", layer, direction)


def _orthogonal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal rows or columns (torch's algorithm)."""
    a = rng.standard_normal((rows, cols))
    if rows < cols:
        a = a.T
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))  # makes the distribution uniform (Haar), as in torch
    return q.T if rows < cols else q


def _weight(rng, scheme: str, n_gates: int, hidden: int, fan_in: int) -> np.ndarray:
    """A stacked (n_gates * hidden, fan_in) weight, block by block for the gate schemes."""
    if scheme == "uniform":
        bound = 1.0 / np.sqrt(hidden)
        return rng.uniform(-bound, bound, size=(n_gates * hidden, fan_in))
    if scheme == "xavier":
        bound = np.sqrt(6.0 / (fan_in + hidden))
        return rng.uniform(-bound, bound, size=(n_gates * hidden, fan_in))
    return np.concatenate([_orthogonal(rng, hidden, fan_in) for _ in range(n_gates)], axis=0)


def draw(
    *,
    n_gates: int,
    input_size: int,
    hidden_size: int,
    num_layers: int,
    num_directions: int,
    bias: bool,
    seed: int,
    scheme: str = "uniform",
    forget_bias: float | None = None,
    proj_size: int = 0,
    cell_params: dict[str, tuple[int, ...]] | None = None,
    fixed: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Draw every parameter of a stacked recurrent layer on the host, in float64.

    Parameters
    ----------
    n_gates : int
        G: 1 (RNN), 4 (LSTM), 3 (GRU).
    input_size, hidden_size, num_layers, num_directions : int
    bias : bool
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    scheme : {"uniform", "xavier", "orthogonal"}
    forget_bias : float or None
        LSTM only (the caller checks): value of the forget-gate bias slice.
    proj_size : int, default 0
        LSTM only (the caller checks): P > 0 adds a ``weight_hr`` (P, H) per
        layer and direction and makes h, hence ``weight_hh``'s second axis and
        the input of layers after the first, P features wide.
    cell_params : dict of str to shape, optional
        A cell's own parameters besides the projection, by name stem (e.g.
        ``{"weight_ci": (H,)}``), drawn per layer and direction from
        :math:`U(-1/\\sqrt{H}, 1/\\sqrt{H})` after all the others, which keep their numbers.
    fixed : dict of str to float, optional
        The constant some of ``cell_params`` start at instead, by name stem
        (a normalisation's gain 1, its bias 0); they draw no numbers.

    Returns
    -------
    dict of str to numpy.ndarray
        PyTorch's state_dict names and order: for each layer, for each
        direction, ``weight_ih`` (G*H, D), ``weight_hh`` (G*H, R), then
        ``bias_ih`` and ``bias_hh`` (G*H,) when ``bias``, then ``weight_hr``
        (P, H) when ``proj_size``. ``R`` is ``proj_size or hidden_size``;
        ``D`` is ``input_size`` for layer 0 and ``num_directions * R`` after.
    """
    rng = np.random.default_rng(seed)
    G, H = n_gates, hidden_size
    R = proj_size or H
    out: dict[str, np.ndarray] = {}
    for layer in range(num_layers):
        fan_in = input_size if layer == 0 else num_directions * R
        for direction in range(num_directions):
            w_ih, w_hh, b_ih, b_hh = param_names(layer, direction)
            out[w_ih] = _weight(rng, scheme, G, H, fan_in)
            out[w_hh] = _weight(rng, scheme, G, H, R)
            if bias:
                bound = 1.0 / np.sqrt(H)
                out[b_ih] = rng.uniform(-bound, bound, size=(G * H,))
                out[b_hh] = rng.uniform(-bound, bound, size=(G * H,))
                if forget_bias is not None:
                    out[b_ih][H : 2 * H] = forget_bias  # host array we own: fine to assign
                    out[b_hh][H : 2 * H] = 0.0
            if proj_size:
                out[projection_name(layer, direction)] = _projection(rng, scheme, H, proj_size)
    for layer in range(num_layers):  # after all the others, which keep their numbers
        for direction in range(num_directions):
            for stem, shape in (cell_params or {}).items():
                name = layer_param_name(stem, layer, direction)
                if fixed and stem in fixed:
                    out[name] = np.full(shape, fixed[stem])
                else:
                    out[name] = rng.uniform(-1 / np.sqrt(H), 1 / np.sqrt(H), size=shape)
    return out


def _projection(rng, scheme: str, hidden: int, proj_size: int) -> np.ndarray:
    """An LSTM projection ``weight_hr`` (P, H): one block, PyTorch's bound 1/sqrt(H) under "uniform"."""
    if scheme == "uniform":
        bound = 1.0 / np.sqrt(hidden)
        return rng.uniform(-bound, bound, size=(proj_size, hidden))
    return _weight(rng, scheme, 1, proj_size, hidden)


def dropout_factors(seed: int, shape: tuple, p: float, count: int) -> list[np.ndarray]:
    """``count`` inverted-dropout factors of ``shape``, drawn on the host in float64.

    Each entry is 0 with probability ``p`` and ``1 / (1 - p)`` otherwise
    (a Bernoulli(1 - p) keep mask over ``1 - p``), so a layer output times
    its factor keeps its expectation.
    """
    rng = np.random.default_rng(seed)
    return [(rng.random(shape) < 1.0 - p) / (1.0 - p) for _ in range(count)]


def update_factors(seed: int, shapes: list, p: float) -> list[np.ndarray]:
    """Zoneout's factors, one float64 host array per shape: 0 (keep the old value) with probability ``p``, else 1."""
    rng = np.random.default_rng(seed)
    return [(rng.random(shape) >= p).astype(np.float64) for shape in shapes]


def check_seed(seed) -> int:
    """A non-negative int seed (``bool`` is refused)."""
    return check_int("seed", seed, minimum=0)


def zeros(shape) -> np.ndarray:
    """A float64 host array of zeros (a learned initial state starts at the usual zero state)."""
    return np.zeros(shape)
