"""``portable_rnn.check_cell``: it passes every built-in cell and names the input of a wrong backward."""

from __future__ import annotations

import dataclasses

import pytest

from portable_rnn import check_cell
from portable_rnn.engine.cells import GRUCell, LSTMCell, RNNCell
from portable_rnn.testing.cellcheck import CellCheckError

BUILT_IN = [RNNCell("tanh"), RNNCell("relu"), LSTMCell(), LSTMCell(proj_size=2), GRUCell()]


@pytest.mark.parametrize("cell", BUILT_IN, ids=repr)
def test_every_built_in_cell_passes(cell):
    report = check_cell(cell)
    assert "finite differences" in report
    for errors in report.values():
        expected = {"x", "W_ih", "W_hh", "b_ih", "b_hh", *(f"{s}_0" for s in cell.states)}
        assert set(errors) == expected | ({"W_hr"} if cell.proj_size else set())
        assert max(errors.values()) < 1e-9


@dataclasses.dataclass(frozen=True)
class _OffForgetPath(LSTMCell):
    """An LSTM whose backward carries dc_{t-1} 1% too large: the gradient of c_0 is wrong first."""

    def step_backward(self, d_state, derivatives, *, xp, W_hr=None):
        dz, d_hw, (dh_prev, dc_prev) = super().step_backward(d_state, derivatives, xp=xp, W_hr=W_hr)
        return dz, d_hw, (dh_prev, 1.01 * dc_prev)


@dataclasses.dataclass(frozen=True)
class _OffOutputGate(GRUCell):
    """A GRU whose step backward is 1% off in one output (its input-side pre-activation gradient)."""

    def step_backward(self, d_state, derivatives, *, xp):
        d_xw, d_hw, d_prev = super().step_backward(d_state, derivatives, xp=xp)
        return 1.01 * d_xw, d_hw, d_prev


def test_a_backward_off_by_one_percent_fails_naming_the_input():
    with pytest.raises(CellCheckError, match=r"_OffForgetPath.*wrong for c_0, .*\n  c_0: relative error \d\.\d\de-02"):
        check_cell(_OffForgetPath(), autodiff=False)
    with pytest.raises(CellCheckError, match=r"wrong for .*W_ih.*\n.*against finite differences") as info:
        check_cell(_OffOutputGate(), autodiff=False)
    assert "b_ih" in str(info.value) and "x" in str(info.value)


def test_autodiff_references_are_used_where_installed():
    pytest.importorskip("jax", reason="JAX is not installed")
    pytest.importorskip("torch", reason="torch is not installed")
    report = check_cell(GRUCell())
    assert set(report) == {"finite differences", "JAX autodiff", "torch autodiff"}
    with pytest.raises(CellCheckError, match="against JAX autodiff"):
        check_cell(_OffOutputGate())
