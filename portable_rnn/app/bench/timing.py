"""How the bench times: pinned thread counts, interleaved rounds, a settling pause, the median.

* Thread counts are pinned equal before anything is timed: ``threads`` for
  torch (``torch.set_num_threads``) and NumPy's BLAS (``threadpoolctl``).
  XLA's CPU thread pool cannot be changed after JAX is imported; the machine
  report states ``XLA_FLAGS`` instead.
* One warm-up run per contender (its result feeds the correctness check),
  then ``repeats`` rounds; every round runs every contender once,
  interleaved, in its own seeded order, with the garbage collector paused.
  The caller reports the median. A fixed cyclic order gave each contender
  the same predecessor in every round, and a predecessor can leave the
  machine slower for the next run (threads still spinning, freed memory the
  kernel must compact before it can hand out huge pages again): one NumPy
  layer measured 1.6x slower in every round after the same torch contender.
* Every timed run can follow a pause (``settle``): BLAS and OpenMP worker
  threads spin for ~0.1 s after a call, and a contender started while
  another library's threads still spin on the same cores measured up to
  1.5x slower. After the pause a contender's own threads are asleep, which
  cost a short run up to 1.4x, so a run shorter than the pause is preceded by
  one untimed run of its own.
* When every contender's first timed run is shorter than :data:`SHORT_S`,
  the configuration gets :data:`SHORT_ROUNDS_FACTOR` times the rounds: on a
  shared 2-core machine the medians of such short runs moved by up to 30%
  (``stretch=False``, as ``--quick`` asks, keeps ``repeats``).
"""

from __future__ import annotations

import gc
import random
import time

__all__ = ["SETTLE_S", "SHORT_S", "SHORT_ROUNDS_FACTOR", "time_all", "pin_threads"]

#: Default seconds of pause before each timed run of the full bench.
SETTLE_S = 0.2
#: A configuration whose contenders' first timed runs are all shorter than this gets more rounds.
SHORT_S = 0.1
SHORT_ROUNDS_FACTOR = 3


def time_all(contenders, repeats, settle=0.0, stretch=True):
    """Warm up each contender once, then ``repeats`` interleaved rounds (more for short runs).

    Parameters
    ----------
    contenders : list of Contender
        Each has a ``name`` and a ``run()`` that returns once its work is done
        (synchronised on GPUs).
    repeats : int
    settle : float
        Seconds of pause before every timed run (0: none).
    stretch : bool
        Give short configurations :data:`SHORT_ROUNDS_FACTOR` times the rounds.

    Returns
    -------
    times : dict
        ``name -> list of seconds``, one per round.
    results : dict
        ``name -> what the warm-up run returned``.
    """
    results, warm_s = {}, {}
    for c in contenders:
        start = time.perf_counter()
        results[c.name] = c.run()
        warm_s[c.name] = time.perf_counter() - start
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    n = len(contenders)
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        r, rounds = 0, repeats
        while r < rounds:
            order = list(range(n))
            random.Random(r).shuffle(order)
            for j in order:
                c = contenders[j]
                if settle:
                    time.sleep(settle)
                    if warm_s[c.name] < settle:
                        c.run()
                start = time.perf_counter()
                c.run()
                times[c.name].append(time.perf_counter() - start)
            if stretch and r == 0 and n and max(t[0] for t in times.values()) < SHORT_S:
                rounds = repeats * SHORT_ROUNDS_FACTOR
            r += 1
    finally:
        if enabled:
            gc.enable()
    return times, results


def pin_threads(threads):
    """Pin torch's and NumPy's BLAS thread counts; returns a function that restores them."""
    undo = []
    try:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        undo.append(lambda: torch.set_num_threads(before))
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(limits=threads, user_api="blas")
        undo.append(limiter.restore_original_limits)
    except ImportError:
        pass

    def restore():
        for fn in reversed(undo):
            fn()

    return restore
