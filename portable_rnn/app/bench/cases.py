"""What the bench times: the configurations, one (cell, configuration) case, and its inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...backends import BACKEND_NAMES
from ...engine.cells import CELLS
from ...layers import LAYERS

__all__ = ["CONFIGS", "QUICK_CONFIGS", "BENCH_CELLS", "BENCH_BACKENDS", "Case", "host_inputs"]

#: The reference configurations (N, T, D, H, dtype): a mid-size batch, a small one, a long
#: single sequence, a large layer, and the first in float64.
CONFIGS = [
    (64, 100, 128, 256, "float32"),
    (32, 50, 64, 128, "float32"),
    (1, 1000, 32, 64, "float32"),
    (256, 50, 512, 512, "float32"),
    (64, 100, 128, 256, "float64"),
]
#: Tiny configurations for ``--quick`` (CI): a few seconds in all.
QUICK_CONFIGS = [(4, 12, 8, 16, "float32")]

#: Every cell, in the order of :data:`portable_rnn.layers.LAYERS`.
BENCH_CELLS = tuple(LAYERS)
#: Backends the bench can time: array-api-strict is a reference namespace, not a speed target.
BENCH_BACKENDS = tuple(name for name in BACKEND_NAMES if not name.startswith("array_api_strict"))


@dataclass(frozen=True)
class Case:
    """One timed case: a cell and the sizes N (batch), T (steps), D (input), H (hidden)."""

    cell: str
    N: int
    T: int
    D: int
    H: int
    dtype: str

    @property
    def G(self) -> int:
        """Gates of the cell (1, 4 or 3): the rows of ``W_ih`` are G*H."""
        return CELLS[self.cell].n_gates

    @property
    def flops(self) -> int:
        r"""Matmul FLOPs of forward + backward: :math:`6\,T N G H (D + H)`.

        Forward projection and recurrence, backward ``dX``, ``dW_ih``,
        recurrence and ``dW_hh``; elementwise work is not counted.
        """
        return 6 * self.T * self.N * self.G * self.H * (self.D + self.H)


def host_inputs(case: Case, seed: int = 0):
    """``(spec, params, x)``: the layer, its parameters (torch.nn names) and x (T, N, D), NumPy, case dtype."""
    spec = LAYERS[case.cell](case.D, case.H)
    params = {k: np.asarray(v) for k, v in spec.init(seed, dtype=case.dtype).items()}
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((case.T, case.N, case.D)).astype(case.dtype)
    return spec, params, x
