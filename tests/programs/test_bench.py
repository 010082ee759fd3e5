"""``portable-rnn bench --quick`` runs and writes the documented JSON.

No timing is asserted: the numbers depend on the machine and its load.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import time

import pytest

from portable_rnn.app import cli
from portable_rnn.app.bench import machine, timing
from portable_rnn.app.bench import run as bench_run
from portable_rnn.app.bench.cases import BENCH_CELLS
from portable_rnn.app.bench.contenders import Contender
from portable_rnn.app.bench.run import SCHEMA, run
from portable_rnn.app.bench.targets import targets
from portable_rnn.engine.cells import CELLS

CONTENDER_FIELDS = {
    "kind", "device", "group", "median_s", "times_s", "gflops", "compile_s", "peak_bytes",
    "tape_bytes", "peak_over_tape", "peak_over_tape_and_grads", "err",
}
RESULT_FIELDS = {"cell", "N", "T", "D", "H", "dtype", "flops", "contenders", "ratios", "skipped"}
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None


def _quick(tmp_path, *flags):
    path = tmp_path / "bench.json"
    status = cli.main(["bench", "--quick", "--json", str(path), "--no-compile-study", *flags])
    assert status == 0
    report = json.loads(path.read_text())
    assert report["schema"] == SCHEMA
    assert set(report) == {"schema", "machine", "settings", "results", "compile_vs_T", "targets"}
    machine = report["machine"]
    for key in ("cpu", "cores", "threads", "platform", "python", "versions", "blas", "env",
                "load_before", "load_after", "xla_threads", "cuda", "numpy_simd", "elementwise"):
        assert key in machine, key
    assert "OPENBLAS_CORETYPE" in machine["env"]
    for dtype in ("float32", "float64"):
        costs = machine["elementwise"][dtype]
        assert set(costs) == {"tanh_ns", "exp_ns", "multiply_ns"} and all(v > 0 for v in costs.values())
    assert report["settings"]["quick"] is True and report["settings"]["repeats"] >= 5
    return report


def _check_result(result, cell, expect):
    assert RESULT_FIELDS <= set(result)
    assert result["cell"] == cell
    G = CELLS[cell].n_gates
    N, T, D, H = result["N"], result["T"], result["D"], result["H"]
    assert result["flops"] == 6 * T * N * G * H * (D + H)
    for name in expect:
        assert name in result["contenders"], (name, result["skipped"])
    for name, c in result["contenders"].items():
        assert set(c) == CONTENDER_FIELDS, name
        assert c["kind"] in ("ours", "reference", "bound")
        assert len(c["times_s"]) >= 5 and all(t > 0 for t in c["times_s"])
        assert c["median_s"] > 0 and c["gflops"] > 0
    for key, ratio in result["ratios"].items():
        a, b = key.split("/")
        assert a in result["contenders"] and b in result["contenders"] and ratio > 0


def test_quick_numpy_writes_the_documented_json(tmp_path):
    report = _quick(tmp_path, "--backend", "numpy")
    assert [r["cell"] for r in report["results"]] == list(BENCH_CELLS)
    expect = ["numpy", "gemm"] + (["torch.nn"] if HAS_TORCH else [])
    for result in report["results"]:
        _check_result(result, result["cell"], expect)
        numpy = result["contenders"]["numpy"]
        assert numpy["peak_bytes"] > 0 and numpy["tape_bytes"] > 0 and numpy["peak_over_tape"] > 0
        assert "numpy/gemm" in result["ratios"]
        if HAS_TORCH:
            assert "numpy/torch.nn" in result["ratios"]
            assert numpy["err"] < 1e-4  # same function as torch.nn, float32
    assert report["targets"] == []  # targets are stated for the reference configurations only


@pytest.mark.skipif(not HAS_TORCH, reason="torch: not installed")
def test_quick_torch_and_portable(tmp_path):
    report = _quick(tmp_path, "--backend", "torch,numpy", "--cells", "gru", "--portable",
                    "--configs", "3x5x4x6:float64", "--repeats", "5", "--threads", "1")
    assert report["settings"]["threads"] == 1
    (result,) = report["results"]
    _check_result(result, "gru", ["torch", "torch.module", "numpy", "numpy:portable", "torch.nn", "gemm",
                                  "gemm:torch"])
    for name in ("torch", "torch.module", "numpy", "numpy:portable"):
        assert result["contenders"][name]["err"] < 1e-12
    assert "torch/torch.nn" in result["ratios"] and "torch/gemm:torch" in result["ratios"]
    module = result["contenders"]["torch.module"]
    assert module["kind"] == "ours" and module["group"] == "cpu"
    for key in ("torch.module/torch.nn", "torch.module/torch", "torch.module/gemm:torch"):
        assert result["ratios"][key] == pytest.approx(
            module["median_s"] / result["contenders"][key.split("/")[1]]["median_s"])


@pytest.fixture(scope="module")
def jax_quick(tmp_path_factory):
    """``bench --quick --backend jax --cells rnn,gru``: the report and what it printed (one run, two tests)."""
    if not HAS_JAX:
        pytest.skip("jax: not installed")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = _quick(tmp_path_factory.mktemp("bench"), "--backend", "jax", "--cells", "rnn,gru", "--repeats", "5")
    return report, printed.getvalue()


def test_quick_jax_reports_compile_time_and_compares_with_jax_grad(jax_quick):
    report, _ = jax_quick
    result = report["results"][0]
    _check_result(result, "rnn", ["jax", "jax.apply", "jax.grad", "gemm"])
    for name in ("jax", "jax.apply", "jax.grad"):
        assert result["contenders"][name]["compile_s"] > 0
        assert result["contenders"][name]["peak_bytes"] > 0  # XLA's memory analysis
        if HAS_TORCH:
            assert result["contenders"][name]["err"] < 1e-4  # same function as torch.nn, float32
    assert "jax/jax.grad" in result["ratios"]
    apply = result["contenders"]["jax.apply"]
    assert apply["kind"] == "ours" and apply["group"] == "cpu"
    for key in ("jax.apply/jax.grad", "jax.apply/jax"):
        assert result["ratios"][key] == pytest.approx(
            apply["median_s"] / result["contenders"][key.split("/")[1]]["median_s"])


def test_quick_is_a_smoke_run_one_thread_and_each_jax_program_once(jax_quick):
    """--quick: one thread, ``repeats`` rounds, jax.apply and jax.grad compiled for the first cell only."""
    report, printed = jax_quick
    assert report["settings"]["threads"] == 1
    first, second = report["results"]
    assert {"jax.apply", "jax.grad"} <= set(first["contenders"]) and not first["skipped"]
    assert "jax" in second["contenders"] and not {"jax.apply", "jax.grad"} & set(second["contenders"])
    assert set(second["skipped"]) == {"jax.apply", "jax.grad"}
    for result in report["results"]:
        assert all(len(c["times_s"]) == 5 for c in result["contenders"].values())
    assert "skipped jax.grad: --quick runs it for the first configuration and cell only" in printed
    kernel_lines = [line for line in printed.splitlines() if "kernels per step" in line]
    assert kernel_lines and all(len(n) <= 4 for line in kernel_lines
                                for n in re.findall(r"[0-9.]+", line.split(":", 1)[1]))


def test_targets_are_computed_for_the_reference_configurations():
    """The target table, from a made-up result (no timing involved)."""
    result = {"cell": "lstm", "N": 64, "T": 100, "D": 128, "H": 256, "dtype": "float32",
              "ratios": {"numpy/torch.nn": 0.9, "numpy/gemm": 1.3, "jax/jax.grad": 0.8, "torch/torch.nn": 1.1},
              "contenders": {"numpy": {"peak_over_tape": 1.5, "peak_over_tape_and_grads": 1.1}}}
    met = {t["name"].split(" ")[0] + " " + t["name"].split(" ")[1]: t["met"]
           for t in targets([result], [{"T": 10, "ours": 1.0}, {"T": 1000, "ours": 1.2}])}
    assert met["numpy/torch.nn lstm"] is True
    assert met["numpy/gemm lstm"] is False
    assert met["jax/jax.grad lstm"] is True
    assert met["torch/torch.nn lstm"] is True
    assert met["numpy peak/(tape+grads)"] is True
    assert met["jax compile"] is True


def test_framework_face_targets():
    """``jax.apply`` must beat ``jax.grad`` in every cell, ``torch.module`` match ``torch.nn`` for GRU and RNN."""
    def result(cell, ratios):
        return {"cell": cell, "N": 32, "T": 50, "D": 64, "H": 128, "dtype": "float32", "ratios": ratios,
                "contenders": {}}

    faces = {"jax.apply/jax.grad": 0.7, "jax.apply:gpu/jax.grad:gpu": 1.1, "torch.module/torch.nn": 1.3}
    got = {t["name"]: t["met"] for t in targets([result(cell, faces) for cell in BENCH_CELLS], [])}
    for cell in BENCH_CELLS:
        assert got[f"jax.apply/jax.grad {cell} (32,50,64,128) float32"] is True
        assert got[f"jax.apply:gpu/jax.grad:gpu {cell} (32,50,64,128) float32"] is False
    assert got["torch.module/torch.nn gru (32,50,64,128) float32"] is False
    assert got["torch.module/torch.nn rnn (32,50,64,128) float32"] is False
    # oneDNN fuses torch.nn.LSTM's loop: no target is set against it.
    assert "torch.module/torch.nn lstm (32,50,64,128) float32" not in got


def test_ratios_pair_each_face_with_its_group():
    """The CUDA names (untimed here without a GPU) get the same ratios as the CPU ones."""
    def c(kind, group):
        return {"kind": kind, "group": group, "median_s": 2.0 if kind == "ours" else 4.0}

    contenders = {"jax:gpu": c("ours", "cuda"), "jax.apply:gpu": c("ours", "cuda"),
                  "torch:cuda": c("ours", "cuda"), "torch.module:cuda": c("ours", "cuda"),
                  "torch.nn:cuda": c("reference", "cuda"), "jax.grad:gpu": c("reference", "cuda"),
                  "gemm:torch:cuda": c("bound", "cuda"), "torch.nn": c("reference", "cpu")}
    ratios = bench_run._ratios(contenders)
    assert ratios["jax.apply:gpu/jax.grad:gpu"] == 0.5 and ratios["jax.apply:gpu/jax:gpu"] == 1.0
    assert ratios["torch.module:cuda/torch.nn:cuda"] == 0.5 and ratios["torch.module:cuda/torch:cuda"] == 1.0
    assert all(contenders[key.split("/")[1]]["group"] == "cuda" for key in ratios)  # groups never mix


def test_bad_flags_exit_with_status_2(capsys):
    assert cli.main(["bench", "--quick", "--cells", "transformer"]) == 2
    assert "unknown cell" in capsys.readouterr().err
    assert cli.main(["bench", "--quick", "--backend", "tpu"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert cli.main(["bench", "--configs", "64x100"]) == 2
    assert "bad config" in capsys.readouterr().err
    assert cli.main(["bench", "--repeats", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


@pytest.mark.processes
def test_python_dash_m_runs_the_same_command():
    result = subprocess.run([sys.executable, "-m", "portable_rnn.app.bench", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "portable-rnn bench" in result.stdout


def test_run_returns_the_report_and_restores_thread_settings():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    out = io.StringIO()
    report = run(configs=[(2, 3, 2, 3, "float64")], cells=["rnn"], backend_names=["numpy"], repeats=5,
                 threads=1, quick=True, out=out)
    after = [d["num_threads"] for d in threadpoolctl.threadpool_info() if d["user_api"] == "blas"]
    assert before == after
    assert report["results"][0]["contenders"]["numpy"]["median_s"] > 0
    assert "BLAS" in out.getvalue() and "RNN N=2 T=3" in out.getvalue()


def test_cuda_contenders_skip_with_a_reason_without_a_gpu():
    """The CUDA path is the same code as the CPU one; without a GPU it reports why it did not run."""
    cuda = machine.cuda_info()
    if cuda is not None:
        pytest.skip("a CUDA device is present: the quick bench covers it")
    report = run(configs=[(2, 3, 2, 3, "float32")], cells=["lstm"],
                 backend_names=["torch:cuda", "cupy", "jax:gpu"], repeats=5, quick=True, out=False)
    (result,) = report["results"]
    assert result["contenders"] == {}
    for name in ("torch:cuda", "torch.module:cuda", "cupy", "jax:gpu", "jax.apply:gpu", "torch.nn:cuda",
                 "jax.grad:gpu", "gemm:torch:cuda"):
        if name.startswith(("torch", "gemm")) and not HAS_TORCH:
            continue
        assert name in result["skipped"], (name, result["skipped"])
        assert result["skipped"][name]


def test_short_runs_get_more_rounds():
    """Rounds triple when every contender's first timed run is under SHORT_S, not otherwise."""
    def contender(name, seconds):
        return Contender(name, "ours", "cpu", lambda: time.sleep(seconds))

    times, _ = timing.time_all([contender("a", 0), contender("b", 0)], repeats=5)
    assert {k: len(v) for k, v in times.items()} == {"a": 15, "b": 15}
    times, _ = timing.time_all([contender("a", 0), contender("slow", timing.SHORT_S)], repeats=5)
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "slow": 5}
