r"""Data parallelism over a JAX device mesh: where each array of a layer or model lives.

Data parallelism for a recurrent network splits the *batch*: every device
runs the whole time loop on its sequences, parameters are replicated, and the
weight gradients are summed across devices once per step. With JAX that is a
sharding, not a program: place the batch along a mesh axis, replicate the
parameters, and ``jax.jit`` the ordinary training step; XLA inserts the one
all-reduce. Because the step sees *global* arrays, a mean loss is the mean
over the global batch (every valid token counted once), not an average of
per-device means::

    from portable_rnn import CharModel, parallel

    mesh = parallel.batch_mesh()                          # all local devices on one axis "data"
    specs = parallel.model_partition_specs(model)
    step = parallel.data_parallel(train_step, mesh,
                                  in_specs=(specs["params"], specs["tokens"], specs["tokens"]),
                                  out_specs=specs["params"])

The engine is written so that a batch-sharded input stays sharded through
forward and backward (states are created like ``x``; no reshape merges time
with the batch). Importing this module needs JAX.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_mesh", "layer_partition_specs", "model_partition_specs", "data_parallel", "shard", "from_host",
           "to_host"]


def batch_mesh(devices=None, axis: str = "data") -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of the default backend)."""
    import numpy as np  # a mesh is an object array of devices, on the host

    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices is empty; expected at least one JAX device")
    return Mesh(np.array(devices, dtype=object), (axis,))


def layer_partition_specs(spec, axis: str = "data") -> dict:
    """Partition specs of a batch-parallel :class:`~portable_rnn.LSTM` (or RNN, GRU).

    Returns
    -------
    dict
        ``x`` and ``out`` ((T, N, F) sharded on N, or (N, T, F) with
        ``batch_first``), ``state`` ((L*dirs, N, H) on N), ``lengths`` ((N,))
        and ``params`` (replicated: ``PartitionSpec()``, a prefix for the
        whole dict).
    """
    x = PartitionSpec(axis, None, None) if spec.batch_first else PartitionSpec(None, axis, None)
    return {"x": x, "out": x, "state": PartitionSpec(None, axis, None), "lengths": PartitionSpec(axis),
            "params": PartitionSpec()}


def model_partition_specs(model, axis: str = "data") -> dict:
    """Partition specs of a batch-parallel :class:`~portable_rnn.CharModel`.

    Returns
    -------
    dict
        ``tokens`` (and targets, logits' leading axes: (N, T) on N),
        ``state`` ((L, N, H) on N) and ``params`` (replicated).
    """
    return {"tokens": PartitionSpec(axis, None), "state": PartitionSpec(None, axis, None),
            "params": PartitionSpec()}


def _shardings(mesh: Mesh, specs):
    """``NamedSharding``s on ``mesh`` for a tree of partition specs."""
    return jax.tree.map(lambda p: NamedSharding(mesh, p), specs,
                        is_leaf=lambda p: isinstance(p, PartitionSpec))


def shard(mesh: Mesh, tree, partition_spec):
    """Put every array of ``tree`` on ``mesh`` with ``partition_spec`` (a spec or a tree prefix of specs)."""
    return jax.device_put(tree, _shardings(mesh, partition_spec))


def data_parallel(step, mesh: Mesh, *, in_specs, out_specs, donate_argnums=()):
    """``step`` compiled for the mesh: inputs and outputs placed by their partition specs.

    Parameters
    ----------
    step : callable
        An ordinary (single-device) step written on global arrays, e.g.
        ``(params, opt_state, tokens, targets) -> (params, opt_state, loss)``.
    mesh : jax.sharding.Mesh
    in_specs, out_specs : tuple of PartitionSpec (or tree prefixes of them)
        One per argument and per result, e.g. from
        :func:`model_partition_specs`.
    donate_argnums : tuple of int
        Arguments whose buffers the step may reuse (parameters, optimiser state).

    Returns
    -------
    callable
        The jitted step; pass arrays placed by :func:`shard` (or let jit move them).
    """
    return jax.jit(step, in_shardings=_shardings(mesh, in_specs), out_shardings=_shardings(mesh, out_specs),
                   donate_argnums=donate_argnums)


def from_host(mesh: Mesh, tree, partition_spec: PartitionSpec):
    """Global arrays on ``mesh``, all placed by ``partition_spec``, from host (NumPy) arrays every process holds whole.

    Unlike :func:`shard`, this also works when the mesh spans several
    processes (after ``jax.distributed.initialize``): each process fills only
    the shards its own devices hold, from its copy of the same host data
    (e.g. a batch that is a pure function of the step).
    """
    sharding = NamedSharding(mesh, partition_spec)
    return jax.tree.map(lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index]), tree)


def to_host(tree):
    """Every array of ``tree`` whole, as NumPy arrays on this host (gathered across processes when needed).

    An array split over several processes is gathered with
    ``multihost_utils.process_allgather``, a collective: every process must
    call this with the same tree. A replicated or process-local array is
    read from this process's own copy.
    """
    import numpy as np

    def whole(a):
        if a.is_fully_addressable:
            return np.array(a, copy=True)
        if a.is_fully_replicated:
            return np.array(a.addressable_data(0), copy=True)
        from jax.experimental import multihost_utils

        return np.array(multihost_utils.process_allgather(a, tiled=True), copy=True)

    return jax.tree.map(whole, tree)
