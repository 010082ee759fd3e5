"""One validation layer for every public function.

Every check reads only static facts (library, dtype, shape, device), so under
``jax.jit`` it runs once at trace time and costs nothing when the compiled
function runs. Messages name the argument, what it got and what was expected.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping, Sequence

from array_api_compat import array_namespace, device, is_array_api_obj, is_jax_array

__all__ = [
    "namespace_of",
    "check_fast_path",
    "check_floating",
    "check_shape",
    "check_keys",
    "check_same_device",
    "placement",
    "library_name",
    "check_time_steps",
    "check_int",
    "check_bool",
    "check_truncate",
    "check_probability",
    "check_real",
    "check_params",
    "check_integer_dtype",
    "check_arrays",
]


def library_name(xp) -> str:
    """Short name of an array namespace (``numpy``, ``jax``, ``torch``, ...)."""
    name = getattr(xp, "__name__", repr(xp))
    for prefix in ("array_api_compat.", "array_api_strict", "jax.numpy"):
        if name.startswith(prefix):
            if prefix == "jax.numpy":
                return "jax"
            if prefix == "array_api_strict":
                return "array_api_strict"
            return name[len(prefix):].split(".")[0]
    return name.split(".")[0]


def namespace_of(**arrays):
    """Return the array namespace shared by the named arrays.

    ``None`` values are ignored. Raises ``TypeError`` naming the argument that
    is not an array, or the two arguments that come from different libraries.
    """
    first_name, first_xp = None, None
    for name, value in arrays.items():
        if value is None:
            continue
        if not is_array_api_obj(value):
            raise TypeError(
                f"{name} must be an array (numpy, cupy, jax, torch or array_api_strict), "
                f"got {type(value).__name__}"
            )
        if type(value).__module__.startswith("numpy.ma"):
            # Its mask would be silently ignored by the array maths.
            raise TypeError(
                f"{name} is a NumPy masked array; pass plain arrays (x.filled(0)) and give "
                "padding as lengths= (layers) or mask= (losses)"
            )
        xp = array_namespace(value)
        if first_xp is None:
            first_name, first_xp = name, xp
        elif xp is not first_xp:
            raise TypeError(
                f"{first_name} is a {library_name(first_xp)} array but {name} is a "
                f"{library_name(xp)} array; pass arrays from one library"
            )
    if first_xp is None:
        raise TypeError("expected at least one array argument")
    return first_xp


def check_floating(xp, **arrays):
    """Check that the named arrays share one real floating dtype; return it.

    There is no silent promotion: an integer array, or a float32 array beside
    a float64 one, raises ``TypeError`` naming the argument.
    """
    first_name, dtype = None, None
    for name, value in arrays.items():
        if value is None:
            continue
        byteorder = getattr(value.dtype, "byteorder", "=")
        if byteorder not in ("=", "|") and value.dtype.newbyteorder("=") != value.dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype.str}, a non-native byte order; convert it "
                f"first, e.g. {name}.astype({name}.dtype.newbyteorder('='))"
            )
        if not xp.isdtype(value.dtype, "real floating"):
            raise TypeError(
                f"{name} has dtype {value.dtype}; expected a real floating dtype "
                "(float32 or float64). Cast it explicitly, e.g. xp.astype(x, xp.float64)"
            )
        if value.dtype not in (xp.float32, xp.float64):
            # Half precision loses the recurrence within tens of steps, and
            # upcasting silently would hide a 2x memory cost: refuse, say how.
            raise TypeError(
                f"{name} has dtype {value.dtype}; portable_rnn computes in float32 or "
                "float64. Cast it explicitly, e.g. xp.astype(x, xp.float32)"
            )
        if dtype is None:
            first_name, dtype = name, value.dtype
        elif value.dtype != dtype:
            raise TypeError(
                f"{name} has dtype {value.dtype} but {first_name} has dtype {dtype}; "
                "cast them to one floating dtype"
            )
    return dtype


def _device_key(value):
    """What "same device" compares for ``value``; ``None`` where it is unknown (JAX tracers).

    A JAX array sharded or replicated over several devices has a sharding, not
    a device, and arrays over the same devices combine whatever their
    partitioning: for JAX arrays the key is the set of devices. Elsewhere it
    is the array's device.
    """
    if is_jax_array(value):
        try:
            return frozenset(value.devices())
        except Exception:  # tracers: jit decides where they live
            return None
    try:
        return device(value)
    except Exception:  # tracers without a committed device
        return None


def _describe(key) -> str:
    """``device cuda:0``, or ``devices [cpu:0, cpu:1, ...]`` for a JAX device set."""
    if isinstance(key, frozenset):
        if len(key) == 1:
            return f"device {next(iter(key))}"
        return f"devices [{', '.join(str(d) for d in sorted(key, key=lambda d: d.id))}]"
    return f"device {key}"


def placement(value):
    """Where new arrays "like" ``value`` go: the ``device=`` creation functions take.

    The device of an array on one device; for a JAX array over several
    devices, a sharding that replicates over the same devices (parameters,
    zero states and masks are whole on every device that holds a slice of
    the batch, so no op has to gather them). ``None`` where it is unknown
    (JAX tracers: jit places what they create).
    """
    if not is_jax_array(value):
        try:
            return device(value)
        except Exception:
            return None
    try:
        sharding = value.sharding
        devices = sharding.device_set
    except Exception:  # tracers
        return None
    if len(devices) == 1:
        return next(iter(devices))
    if sharding.is_fully_replicated:
        return sharding
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = getattr(sharding, "mesh", None)
    if not isinstance(mesh, Mesh):  # shardings without a mesh: one axis over their devices
        mesh = Mesh(tuple(sorted(devices, key=lambda d: d.id)), ("devices",))
    return NamedSharding(mesh, PartitionSpec())


def check_same_device(**arrays):
    """Check that the named arrays live on one device (JAX: one set of devices); return where.

    ``None`` values are ignored. Returns :func:`placement` of the first array
    whose device is known, ``None`` when none is (under ``jax.jit`` devices
    are unknown and the check is skipped).
    """
    first_name, first_key, first_value = None, None, None
    for name, value in arrays.items():
        if value is None:
            continue
        key = _device_key(value)
        if key is None:
            continue
        if first_key is None:
            first_name, first_key, first_value = name, key, value
        elif key != first_key:
            raise ValueError(
                f"{name} is on {_describe(key)} but {first_name} is on {_describe(first_key)}; "
                "move them to one device"
            )
    return None if first_value is None else placement(first_value)


def _format_shape(expected: Sequence) -> str:
    return "(" + ", ".join("*" if e is None else str(e) for e in expected) + (
        ",)" if len(expected) == 1 else ")"
    )


def check_shape(name: str, value, expected: Sequence, meaning: str = "") -> None:
    """Check ``value.shape`` against ``expected`` (``None`` matches any size).

    Parameters
    ----------
    name : str
        Argument name used in the message.
    value : array
    expected : sequence of int or None
    meaning : str, optional
        What the axes are, e.g. ``"(n_x, m)"``, added to the message.
    """
    shape = tuple(value.shape)
    ok = len(shape) == len(expected) and all(
        e is None or s == e for s, e in zip(shape, expected)
    )
    if not ok:
        what = f" {meaning}" if meaning else ""
        raise ValueError(
            f"{name} has shape {shape}; expected {_format_shape(expected)}{what}"
        )


def check_time_steps(name: str, value, axis: int) -> None:
    """Refuse an empty time axis: a recurrence over zero steps has no output.

    (The batch axis may be empty: that is ordinary, empty work.)
    """
    if value.shape[axis] == 0:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}; expected at least one time step "
            f"(axis {axis} is time)"
        )


def check_keys(name: str, mapping: Mapping, required: Sequence[str]) -> None:
    """Check that a parameter dict holds every required key."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name} must be a dict of arrays, got {type(mapping).__name__}")
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ValueError(
            f"{name} is missing key(s) {missing}; expected keys {list(required)}, "
            f"got {sorted(mapping)}"
        )


def check_arrays(**arrays):
    """One library, one real floating dtype and one device for the named arrays.

    ``None`` values are ignored. Returns ``(xp, dtype, device)``; the device
    is ``None`` where it is unknown (JAX tracers).
    """
    xp = namespace_of(**arrays)
    dtype = check_floating(xp, **arrays)
    return xp, dtype, check_same_device(**arrays)


def check_params(name: str, params: Mapping, shapes: Mapping[str, Sequence], owner=None):
    """Check a parameter dict against the names and shapes ``owner`` expects.

    The keys must be exactly those of ``shapes``, every array its shape, and
    all of them one library, one floating dtype and one device.

    Parameters
    ----------
    name : str
        Argument name used in messages, e.g. ``"params"``.
    params : dict of str to array
    shapes : dict of str to tuple of int
        The expected keys and shapes (a spec's ``param_shapes()``).
    owner : object, optional
        What the parameters are for (a spec), named when a key is unexpected.

    Returns
    -------
    xp : namespace
    dtype : dtype
    """
    check_keys(name, params, list(shapes))
    extra = [k for k in params if k not in shapes]
    if extra:
        whose = f" for {owner!r}" if owner is not None else ""
        raise ValueError(f"{name} has unexpected key(s) {extra}{whose}; expected keys {list(shapes)}")
    xp, dtype, _ = check_arrays(**{f"{name}['{k}']": params[k] for k in shapes})
    for key, shape in shapes.items():
        check_shape(f"{name}['{key}']", params[key], shape)
    return xp, dtype


def check_int(name: str, value, minimum: int = 1) -> int:
    """A Python or NumPy integer ``>= minimum`` (never a bool), returned as ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """Exactly ``True`` or ``False``: a truthy array or string is a mistake here."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_real(name: str, value, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, finite: bool = True) -> float:
    """A Python real number (never a bool, never NaN) as a ``float``, checked against its range.

    Parameters
    ----------
    name : str
        The argument's name, for the messages.
    value : object
    low, high : float, optional
        ``value >= low`` (``> low`` with ``low_open``) and ``value < high``, where given.
    finite : bool
        Refuse infinities (an infinite learning rate would not fail: it would
        turn the parameters into NaN a step later). Only a bound like a
        clipping norm means something at infinity.

    Raises
    ------
    TypeError
        ``value`` is not a real number.
    ValueError
        It is NaN, infinite where ``finite``, or out of its range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float's range (only an int overflows)
        number = -math.inf if value < 0 else math.inf
    ok = (not math.isnan(number) and (math.isfinite(number) or not finite)
          and (low is None or number > low or (number == low and not low_open))
          and (high is None or number < high))
    if not ok:
        if high is not None:
            what = f"a number in {'(' if low_open else '['}{low}, {high})"
        else:
            bound = "" if low is None else f" {'>' if low_open else '>='} {low}"
            what = f"a {'finite ' if finite else ''}number{bound}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return number


def check_probability(name: str, value) -> float:
    """A real number in [0, 1), returned as ``float``: e.g. a dropout rate."""
    return check_real(name, value, 0, 1)


def check_truncate(truncate) -> int | None:
    """The truncated-BPTT window: ``None`` (full BPTT) or an int >= 1, returned as ``int``."""
    if truncate is None:
        return None
    if isinstance(truncate, bool) or not isinstance(truncate, numbers.Integral) or truncate < 1:
        raise ValueError(f"truncate must be None or a positive int, got {truncate!r}")
    return int(truncate)


#: What a forward can retain for the backward: the ``retain`` argument of the layers,
#: :func:`portable_rnn.jax.apply` and :func:`portable_rnn.engine.sequence.forward`.
RETAIN = ("full", "checkpoint", "none")


def check_fast_path(fast_path):
    """``"auto"``, ``True`` or ``False`` (exactly): whether the fast kernels run a layer."""
    if fast_path is True or fast_path is False or (isinstance(fast_path, str) and fast_path == "auto"):
        return fast_path
    raise ValueError(f"fast_path must be 'auto', True or False, got {fast_path!r}")


def check_retain(retain, checkpoint_every, *, backward_by: str | None = None,
                 tape: str | None = None) -> tuple[str, int | None]:
    """What a forward retains (``"full"``, ``"checkpoint"``, ``"none"``) and its segment length, checked.

    ``checkpoint_every`` (None, or an int >= 1) only means something when the
    forward runs in segments, so it is refused with ``retain="full"``.
    ``backward_by`` names a caller that runs the backward too, for which
    ``"none"`` is refused. ``tape`` is ``retain``'s deprecated spelling: it
    still works, with a ``DeprecationWarning`` (give one of them).
    """
    if tape is not None:
        if retain != "full":
            raise TypeError(f"give retain= or its other name tape=, not both (got retain={retain!r}, tape={tape!r})")
        warnings.warn("tape= is deprecated, use retain= (the same values)", DeprecationWarning, stacklevel=3)
        retain = tape
    if not isinstance(retain, str) or retain not in RETAIN:
        raise ValueError(f"retain must be one of {', '.join(map(repr, RETAIN))}, got {retain!r}")
    if backward_by is not None and retain == "none":
        raise ValueError(f"retain='none' keeps nothing for the backward that {backward_by} runs; "
                         "use 'full' or 'checkpoint'")
    if checkpoint_every is None:
        return retain, None
    if retain == "full":
        raise ValueError(
            f"checkpoint_every={checkpoint_every!r} needs retain='checkpoint' (or 'none'); the full tape has no segments"
        )
    return retain, check_int("checkpoint_every", checkpoint_every)


def check_integer_dtype(xp, name: str, value, meaning: str = "indices") -> None:
    """Refuse a non-integer array where indices or tokens are expected."""
    if not xp.isdtype(value.dtype, "integral"):
        raise TypeError(
            f"{name} has dtype {value.dtype}; expected an integer dtype ({meaning}). "
            f"Cast it explicitly, e.g. xp.astype({name}, xp.int64)"
        )


def check_cache(cache, kind, producer: str):
    """``cache`` itself if it is a ``kind`` (the cache that ``producer`` returns), else a TypeError."""
    if not isinstance(cache, kind):
        raise TypeError(f"cache must be the cache returned by {producer}, got {type(cache).__name__}")
    return cache


def check_upstream(xp, name: str, value, tape_x, expected: tuple, meaning: str) -> None:
    """An upstream gradient ``value``: floating, on the device of the forward's input, of ``expected`` shape."""
    named = {"x (from cache)": tape_x, name: value}  # messages then blame ``name``
    check_floating(xp, **named)
    check_same_device(**named)
    check_shape(name, value, expected, meaning)
